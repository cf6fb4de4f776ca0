//! A fresh PostgreSQL database per test, in the server `scripts/postgres` keeps running
//! (127.0.0.1:5432, or `PORTCULLIS_TEST_POSTGRES`), dropped when the test ends.

use sqlx::Connection as _;

/// The server's admin URL.
pub fn admin_url() -> String {
    std::env::var("PORTCULLIS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test; dropped (with its connections) on drop.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `work` on a new connection to `url`, from synchronous test code.
pub fn connected<T>(url: &str, work: impl AsyncFnOnce(&mut sqlx::PgConnection) -> T) -> T {
    runtime().block_on(async {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test database: {e}"));
        work(&mut conn).await
    })
}

impl TestDatabase {
    pub fn create() -> TestDatabase {
        let admin = admin_url();
        let name = format!("portcullis_test_{}", uuid::Uuid::new_v4().simple());
        runtime().block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL at {admin} is not reachable ({e}); scripts/postgres starts it"
                    )
                });
            // The name is ours (a UUID), never input.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .unwrap();
        });
        let url = match admin.rfind('/') {
            Some(i) => format!("{}/{name}", &admin[..i]),
            None => panic!("{admin} names no database"),
        };
        TestDatabase { name, url }
    }

    /// The authority (`user@host:port`) and what follows it (`/db?…`) of the URL.
    fn split(&self) -> (&str, &str, &str) {
        let (scheme, rest) = self.url.split_once("://").expect("the URL has a scheme");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        (scheme, &rest[..end], &rest[end..])
    }

    /// The URL with its host and port replaced by `127.0.0.1:port` (to go through a relay).
    pub fn url_via(&self, port: u16) -> String {
        let (scheme, authority, tail) = self.split();
        let userinfo = authority.rsplit_once('@').map(|(user, _)| user);
        let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        format!("{scheme}://{userinfo}127.0.0.1:{port}{tail}")
    }

    /// The server's address, for a relay in front of it.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        let (_, authority, _) = self.split();
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, port.parse().expect("a port")),
            _ => (hostport, 5432),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = match host {
            "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
            ip => ip
                .parse()
                .unwrap_or_else(|_| panic!("the test server's host {ip:?} is not an IP")),
        };
        std::net::SocketAddr::new(ip, port)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = admin_url();
        let name = self.name.clone();
        runtime().block_on(async {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await;
            }
        });
    }
}
