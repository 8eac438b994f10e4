//! `patron serve` tried as an attacker, with real clients: the corpus in
//! `serve_attacks.py` (injection through allowed statements, engine options in every
//! spelling, DDL/DML/COPY on both protocols, deep and huge statements, cancel requests,
//! large results, malformed protocol bytes, a connection flood), and SCRAM logins for
//! unknown users. Every attack gets an error, leaves no trace, and the server keeps serving.

use std::process::Command;

use crate::serve::{project_with_serve, project_with_user, psql_rows, shared_warehouse, start};
use crate::support::text;

#[test]
fn serve_survives_the_attack_corpus_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let pipeline = project_with_serve(dir.path(), "max_connections = 24\nstatement_timeout_secs = 60\n");
    let wh = shared_warehouse().to_str().unwrap().to_string();
    let server = start(
        dir.path(),
        &["--pipeline", pipeline.to_str().unwrap(), "--warehouse", &wh],
        &[],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/serve_attacks.py");
    let out = Command::new("python3")
        .arg(script)
        .env("PORT", server.port.to_string())
        .env("SCRATCH", &scratch)
        .env("SERVER_PID", server.child.id().to_string())
        .output()
        .expect("python3 runs");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{printed}");
    assert!(
        out.status.success() && !printed.contains("FAIL") && printed.contains("failures 0"),
        "{}",
        text(&out)
    );
    // The scratch folder the attacks aimed at is still empty, and psql still gets answers.
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    assert_eq!(psql_rows(server.port, "SELECT 1 + 1"), ["2"]);
}

/// The first SCRAM round for `user`: the salt the server announces (base64), read with a
/// raw protocol exchange so nothing but the server decides it.
const SCRAM_SALT: &str = r#"
import base64, os, socket, struct
def salt(user):
    s = socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=10)
    body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0patron\0\0"
    s.sendall(struct.pack("!i", len(body) + 4) + body)
    def message():
        head = b""
        while len(head) < 5:
            head += s.recv(5 - len(head))
        kind, n = head[:1], struct.unpack("!i", head[1:])[0]
        data = b""
        while len(data) < n - 4:
            data += s.recv(n - 4 - len(data))
        return kind, data
    kind, data = message()
    assert kind == b"R" and struct.unpack("!i", data[:4])[0] == 10, (kind, data)
    first = b"n,,n=,r=" + base64.b64encode(os.urandom(18))
    mech = b"SCRAM-SHA-256\0"
    payload = mech + struct.pack("!i", len(first)) + first
    s.sendall(b"p" + struct.pack("!i", len(payload) + 4) + payload)
    kind, data = message()
    assert kind == b"R" and struct.unpack("!i", data[:4])[0] == 11, (kind, data)
    fields = dict(f.split("=", 1) for f in data[4:].decode().split(","))
    s.close()
    return fields["s"], fields["i"]
for user in ["bi", "bi", "ghost", "ghost", "nobody"]:
    print(user, *salt(user))
"#;

#[test]
fn serve_gives_unknown_users_a_stable_salt_like_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, _) = project_with_user(dir.path(), "bi", "correct horse");
    let wh = shared_warehouse().to_str().unwrap().to_string();
    let args = ["--pipeline", pipeline.to_str().unwrap(), "--warehouse", &wh];
    let salts = |port: u16| {
        let out = Command::new("python3")
            .args(["-c", SCRAM_SALT])
            .env("PORT", port.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let first = salts(start(dir.path(), &args, &[]).port);
    let [bi, bi_again, ghost, ghost_again, nobody] = &first[..] else {
        panic!("{first:?}")
    };
    assert_eq!(bi, bi_again);
    assert_eq!(ghost, ghost_again, "an unknown user's salt changed between attempts");
    assert_ne!(ghost[1], nobody[1], "two unknown users share a salt");
    assert_eq!(ghost[1].len(), bi[1].len(), "{ghost:?} {bi:?}");
    assert_eq!(ghost[2], bi[2], "iteration counts differ");
    // After a restart with the same users, an unknown user's salt is still the same.
    let second = salts(start(dir.path(), &args, &[]).port);
    assert_eq!(first, second);
}
