//! A test-only transform, to show what a new kind takes: this folder and one line in
//! [`super::KINDS`]. It sets `x-portcullis-stamp: <value>` on every request in scope.

use std::sync::Arc;

use serde::Deserialize;

use super::kind::required_config;
use super::kind::{Applied, CompileContext, Kind, Transform, TransformConfig};
use super::{Annotations, Exchange, Step};
use crate::secrets::SecretValue;
use crate::vocab::FieldError;

pub(super) const KIND: Kind = Kind {
    name: "stamp",
    parse: |_, config| {
        let config: StampConfig = required_config(config, "stamp needs a `config` with a `value`")?;
        if config.value.is_empty() {
            return Err(vec![FieldError::new("config.value", "must not be empty")]);
        }
        Ok(Arc::new(config))
    },
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct StampConfig {
    value: String,
}

impl TransformConfig for StampConfig {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn compile(&self, _: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        Ok(Box::new(Stamp {
            value: self.value.clone(),
        }))
    }
}

struct Stamp {
    value: String,
}

impl Transform for Stamp {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        exchange
            .mutations
            .set("x-portcullis-stamp", SecretValue::new(self.value.clone()));
        Applied::Done(Step::Continue(Annotations::default()))
    }
}

#[cfg(test)]
mod tests {
    use crate::secrets::SecretValue;
    use crate::transforms::test_support::{config_errors, request, snapshot, transform_mutations};

    const CONFIG: &str = "policies:\n  - name: api\n    action: allow\n    rules: [{host: api.example.com}]\n\
                          transforms:\n  - allowlist\n  - {name: stamp, config: {value: checked}}\n";

    #[tokio::test]
    async fn a_registered_kind_is_parsed_compiled_and_run_where_it_is_listed() {
        let snapshot = snapshot(CONFIG);
        let allowed = snapshot
            .decide(&request("GET https://api.example.com/", &[]), &[], None)
            .await
            .outcome;
        let names: Vec<_> = allowed.trace.iter().map(|t| t.name).collect();
        assert_eq!(names, ["allowlist", "stamp", "network_guard"]);
        assert_eq!(
            transform_mutations(&allowed).set,
            [(
                "x-portcullis-stamp".to_owned(),
                SecretValue::new("checked".to_owned())
            )]
        );
        // A refused request stops at the allowlist: the stamp never runs.
        let refused = snapshot
            .decide(&request("GET https://other.example.com/", &[]), &[], None)
            .await
            .outcome;
        assert!(refused.rejection.is_some());
        assert!(refused.trace.iter().all(|t| t.name != "stamp"));
        assert!(transform_mutations(&refused).set.is_empty());
    }

    #[test]
    fn its_config_errors_are_placed_like_any_kinds() {
        assert_eq!(
            config_errors(&CONFIG.replace("value: checked", "value: \"\"")),
            ["transforms[1].config.value: must not be empty"]
        );
        assert_eq!(
            config_errors(&CONFIG.replace("{name: stamp, config: {value: checked}}", "stamp")),
            ["transforms[1].config: stamp needs a `config` with a `value`"]
        );
    }
}
