"""Local package registries for the client matrix (tests/integration/clients.rs).

One server, over HTTPS (and plain HTTP), holding one small package in each ecosystem's own
wire format, so the real clients talk to it as they would to the public registries:

  /simple/portcullis-demo/         PEP 503 index + wheel            (pip, uv)
  /npm/portcullis-demo             packument + tarball              (npm)
  /cargo/index/                    sparse registry index + .crate   (cargo)
  /git/demo.git                    smart HTTP (git http-backend)    (git clone)
  /apt/                            flat repository + .deb           (apt-get)
  /v1/chat/completions             an OpenAI-style stand-in         (the OpenAI SDK)

Each ecosystem also has a `forbidden` package the tests' policies refuse. Absolute URLs in
answers (npm tarballs, cargo downloads) are built from the request's Host, as the public
registries' are from their own name. Prints one JSON line with the ports once serving.
"""

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = "portcullis-demo"
VERSION = "0.1.0"


def tar_gz(files):
    """A .tar.gz of {path: bytes}."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = 1700000000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def wheel(name):
    dist = name.replace("-", "_")
    files = {
        f"{dist}/__init__.py": b"VALUE = 'through the gateway'\n",
        f"{dist}-{VERSION}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {VERSION}\n".encode()),
        f"{dist}-{VERSION}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: portcullis-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"),
    }
    record = "".join(
        "%s,sha256=%s,%d\n" % (
            path,
            base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode(),
            len(data))
        for path, data in files.items())
    record += f"{dist}-{VERSION}.dist-info/RECORD,,\n"
    files[f"{dist}-{VERSION}.dist-info/RECORD"] = record.encode()
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return f"{dist}-{VERSION}-py3-none-any.whl", raw.getvalue()


def npm_tarball(name):
    package = json.dumps({"name": name, "version": VERSION, "main": "index.js"}).encode()
    return tar_gz({"package/package.json": package,
                   "package/index.js": b"module.exports = 'through the gateway';\n"})


def crate(name):
    manifest = (f'[package]\nname = "{name}"\nversion = "{VERSION}"\nedition = "2021"\n').encode()
    return tar_gz({f"{name}-{VERSION}/Cargo.toml": manifest,
                   f"{name}-{VERSION}/src/lib.rs": b"pub const VALUE: &str = \"through the gateway\";\n"})


def cargo_index_path(name):
    if len(name) <= 2:
        return f"{len(name)}/{name}"
    if len(name) == 3:
        return f"3/{name[0]}/{name}"
    return f"{name[0:2]}/{name[2:4]}/{name}"


def deb(work, name):
    root = os.path.join(work, "deb-" + name)
    os.makedirs(os.path.join(root, "DEBIAN"))
    os.makedirs(os.path.join(root, "usr/share/doc", name))
    with open(os.path.join(root, "DEBIAN/control"), "w") as f:
        f.write(f"Package: {name}\nVersion: {VERSION}\nArchitecture: all\n"
                f"Maintainer: Portcullis tests <tests@portcullis.invalid>\n"
                f"Description: a package fetched through the gateway\n")
    with open(os.path.join(root, "usr/share/doc", name, "README"), "w") as f:
        f.write("through the gateway\n")
    out = os.path.join(work, "apt", f"{name}_{VERSION}_all.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, out],
                   check=True, capture_output=True)


class Registry:
    def __init__(self, work):
        self.work = work
        self.files = {}  # path -> (content type, bytes)
        self.requests = []
        self.lock = threading.Lock()
        for name in (NAME, "forbidden"):
            filename, data = wheel(name)
            self.files[f"/simple/files/{filename}"] = ("application/octet-stream", data)
            digest = hashlib.sha256(data).hexdigest()
            html = (f'<!DOCTYPE html><html><body><a href="/simple/files/{filename}#sha256={digest}">'
                    f"{filename}</a></body></html>\n").encode()
            self.files[f"/simple/{name}/"] = ("text/html", html)
            tarball = npm_tarball(name)
            self.files[f"/npm/{name}/-/{name}-{VERSION}.tgz"] = ("application/octet-stream", tarball)
            data = crate(name)
            self.files[f"/cargo/api/v1/crates/{name}/{VERSION}/download"] = (
                "application/x-tar", data)
            entry = {"name": name, "vers": VERSION, "deps": [], "features": {},
                     "cksum": hashlib.sha256(data).hexdigest(), "yanked": False}
            self.files["/cargo/index/" + cargo_index_path(name)] = (
                "text/plain", (json.dumps(entry) + "\n").encode())
        self.npm = {name: npm_tarball(name) for name in (NAME, "forbidden")}
        os.makedirs(os.path.join(work, "apt"))
        for name in (NAME, "forbidden"):
            deb(work, name)
        packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "."],
                                  cwd=os.path.join(work, "apt"), check=True,
                                  capture_output=True).stdout
        self.files["/apt/Packages"] = ("text/plain", packages)
        packages_gz = gzip.compress(packages, mtime=0)
        self.files["/apt/Packages.gz"] = ("application/gzip", packages_gz)
        # A flat repository's Release, which apt insists on even for `[trusted=yes]`.
        release = "Origin: portcullis-tests\nLabel: portcullis-tests\nSuite: ./\nSHA256:\n" + "".join(
            f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}\n"
            for name, data in (("Packages", packages), ("Packages.gz", packages_gz)))
        self.files["/apt/Release"] = ("text/plain", release.encode())
        for name in sorted(os.listdir(os.path.join(work, "apt"))):
            if name.endswith(".deb"):
                with open(os.path.join(work, "apt", name), "rb") as f:
                    self.files[f"/apt/{name}"] = ("application/vnd.debian.binary-package", f.read())
        self.git_root = os.path.join(work, "git")
        for name in ("demo", "forbidden"):
            self.git_repo(name)

    def git_repo(self, name):
        src = os.path.join(self.work, "git-src-" + name)
        bare = os.path.join(self.git_root, name + ".git")
        env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid",
                   GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t.invalid")
        run = lambda *args, cwd=None: subprocess.run(args, cwd=cwd, env=env, check=True,
                                                     capture_output=True)
        run("git", "init", "-q", "-b", "main", src)
        with open(os.path.join(src, "README"), "w") as f:
            f.write("through the gateway\n")
        run("git", "add", "README", cwd=src)
        run("git", "commit", "-q", "-m", "first", cwd=src)
        run("git", "clone", "-q", "--bare", src, bare)

    def npm_packument(self, name, base):
        tarball = self.npm[name]
        version = {
            "name": name, "version": VERSION,
            "dist": {
                "tarball": f"{base}/npm/{name}/-/{name}-{VERSION}.tgz",
                "shasum": hashlib.sha1(tarball).hexdigest(),
                "integrity": "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode(),
            },
        }
        return {"name": name, "dist-tags": {"latest": VERSION}, "versions": {VERSION: version}}


def handler_for(registry, scheme):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def record(self, body=b""):
            with registry.lock:
                registry.requests.append({
                    "method": self.command, "path": self.path, "scheme": scheme,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode("utf-8", "replace")})

        def reply(self, status, content_type, data, extra=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            self.record()
            # apt asks a flat repository `./` for `/apt/./Packages`.
            path = self.path.split("?", 1)[0].replace("/./", "/")
            host = self.headers.get("Host", "localhost")
            base = f"{scheme}://{host}"
            if path == "/_requests":
                with registry.lock:
                    return self.reply(200, "application/json", json.dumps(registry.requests).encode())
            if path.startswith("/git/"):
                return self.git()
            if path == "/cargo/index/config.json":
                config = {"dl": f"{base}/cargo/api/v1/crates", "api": base}
                return self.reply(200, "application/json", json.dumps(config).encode())
            if path.startswith("/npm/") and "/-/" not in path:
                name = path[len("/npm/"):].replace("%2f", "/").replace("%2F", "/")
                if name in registry.npm:
                    data = json.dumps(registry.npm_packument(name, base)).encode()
                    return self.reply(200, "application/json", data)
            if path.startswith("/simple/") and not path.endswith("/") and "/files/" not in path:
                return self.reply(301, "text/plain", b"", [("Location", path + "/")])
            found = registry.files.get(path)
            if found is None:
                return self.reply(404, "text/plain", b"not found\n")
            self.reply(200, found[0], found[1])

        def do_POST(self):
            body = self.body()
            self.record(body)
            path = self.path.split("?", 1)[0]
            if path.startswith("/git/"):
                return self.git(body)
            if path == "/v1/chat/completions":
                answer = {
                    "id": "chatcmpl-standin", "object": "chat.completion", "created": 1700000000,
                    "model": "stand-in",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "hello through the gateway"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                }
                return self.reply(200, "application/json", json.dumps(answer).encode())
            self.reply(404, "text/plain", b"not found\n")

        def git(self, body=b""):
            path, _, query = self.path.partition("?")
            env = dict(os.environ, GIT_PROJECT_ROOT=registry.git_root, GIT_HTTP_EXPORT_ALL="1",
                       PATH_INFO=path[len("/git"):], QUERY_STRING=query,
                       REQUEST_METHOD=self.command,
                       CONTENT_TYPE=self.headers.get("Content-Type", ""),
                       CONTENT_LENGTH=str(len(body)), REMOTE_ADDR="127.0.0.1")
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
                env["CONTENT_LENGTH"] = str(len(body))
            out = subprocess.run(["git", "http-backend"], input=body, env=env,
                                 capture_output=True).stdout
            head, _, data = out.partition(b"\r\n\r\n")
            status, headers = 200, []
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            content_type = dict((k.lower(), v) for k, v in headers).get("content-type", "text/plain")
            extra = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")]
            self.reply(status, content_type, data, extra)

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tls-cert", required=True)
    parser.add_argument("--tls-key", required=True)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="portcullis-registry-")
    try:
        registry = Registry(work)
        tls = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(registry, "https"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        tls.socket = context.wrap_socket(tls.socket, server_side=True)
        plain = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(registry, "http"))
        for server in (tls, plain):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        print(json.dumps({"https_port": tls.server_address[1], "http_port": plain.server_address[1]}),
              flush=True)
        sys.stdin.read()  # until the test closes our stdin (or dies)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
