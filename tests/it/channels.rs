//! Where packages come from: channel names under an alias, paths relative to the environment
//! file, and an HTTPS channel with a private CA that answers only with credentials.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::support::fixture::Fixture;
use crate::support::{self, envpack, run_err, run_ok};

#[test]
fn channel_alias_and_relative_channels_resolve() {
    let f = Fixture::new();
    let chans = f.path().join("channels");
    // A named channel under a file:// alias.
    let env = f.env_text("channels: [local, nodefaults]\ndependencies: [tool]\n");
    let out = run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .arg("--dry-run")
            .arg("--channel-alias")
            .arg(format!("file://{}", chans.display())),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tool"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A path relative to the environment file, and the variable form of the alias.
    let sub = f.path().join("model");
    std::fs::create_dir_all(&sub).unwrap();
    let env = support::write_environment_text(
        &sub,
        "channels: [../channels/local]\ndependencies: [local::tool]\n",
    );
    let out = run_ok(
        envpack()
            .arg("pack")
            .arg(&env)
            .args(["--dry-run", "--json"])
            .env(
                "ENVPACK_CHANNEL_ALIAS",
                format!("file://{}", chans.display()),
            ),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["packages"][0]["name"], "tool");
    assert!(
        v["packages"][0]["channel"]
            .as_str()
            .unwrap()
            .ends_with("/channels/local"),
        "{v}"
    );
    assert_eq!(v["dry_run"], true);
    assert!(!f.path().join("model/environment.tar.gz").exists());
}

/// A channel served over HTTPS on 127.0.0.1, with a certificate from a test CA, that answers
/// only with basic auth; stopped by PID.
struct AuthChannel {
    child: Child,
    port: u16,
    /// The test CA's certificate (trusted through `SSL_CERT_FILE`).
    ca: PathBuf,
}

impl AuthChannel {
    fn start(dir: &Path, certs: &Path) -> Self {
        std::fs::create_dir_all(certs).unwrap();
        let openssl = |args: &str| {
            run_ok(
                Command::new("openssl")
                    .args(args.split_whitespace())
                    .current_dir(certs),
            );
        };
        openssl(
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=envpack-test-ca",
        );
        openssl("req -newkey rsa:2048 -nodes -keyout key.pem -out leaf.csr -subj /CN=127.0.0.1");
        std::fs::write(
            certs.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(
            "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext.cnf",
        );
        let script = r#"
import base64, functools, http.server, ssl, sys
want = 'Basic ' + base64.b64encode(b'user:secret').decode()
class H(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get('Authorization') != want:
            self.send_response(401)
            self.send_header('WWW-Authenticate', 'Basic realm="channel"')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        super().do_GET()
    do_HEAD = do_GET
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(H, directory=sys.argv[1]))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2] + '/cert.pem', sys.argv[2] + '/key.pem')
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(dir)
            .arg(certs)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        Self {
            child,
            port,
            ca: certs.join("ca.pem"),
        }
    }
}

impl Drop for AuthChannel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_channels_behind_authentication_use_rattlers_credentials() {
    let f = Fixture::new();
    let d = f.path();
    let server = AuthChannel::start(&f.channel_dir(), &d.join("certs"));
    let url = format!("https://127.0.0.1:{}/", server.port);
    let env = f.env_text(&format!(
        "name: auth\nchannels: [{url}]\ndependencies: [tool]\n"
    ));
    let home = d.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cmd = |out: &str| {
        let mut c = envpack();
        c.arg("pack")
            .arg(&env)
            .arg("-o")
            .arg(d.join(out))
            .arg("--cache-dir")
            .arg(d.join("cache"));
        c.arg("-q").env("HOME", &home);
        c
    };
    // A certificate nobody vouches for is refused.
    let out = run_err(&mut cmd("a.tar.gz"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
    // Trusted (SSL_CERT_FILE), but without credentials: the server's refusal.
    let out = run_err(cmd("a.tar.gz").env("SSL_CERT_FILE", &server.ca));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    // With rattler's credentials file: solved, downloaded and packed.
    let auth = d.join("credentials.json");
    std::fs::write(
        &auth,
        r#"{"127.0.0.1": {"BasicHTTP": {"username": "user", "password": "secret"}}}"#,
    )
    .unwrap();
    run_ok(
        cmd("auth.tar.gz")
            .env("SSL_CERT_FILE", &server.ca)
            .env("RATTLER_AUTH_FILE", &auth),
    );
    let listing = support::list(&d.join("auth.tar.gz"));
    assert!(listing.iter().any(|m| m == "etc/tool.conf"), "{listing:?}");
    assert!(!d.join("a.tar.gz").exists());
}
