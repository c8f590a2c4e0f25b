//! Evidence for auditors, end to end with real parts (a real `sshd` target, the real `ssh`
//! client, the real `penstock serve`, SQLite and PostgreSQL): a word typed in a real session is
//! found by search at its offset, the session replays (screen at a moment, transcript,
//! sanitised playback), a hostile target's output never reaches the auditor's terminal, and a
//! signed evidence bundle verifies with `penstock evidence verify` and with stock tools
//! (`sha256sum -c`, `ssh-keygen -Y verify`) and fails, naming the cause, for each kind of
//! tampering.
//!
//! The tests must run as root (see tests/common/sshd.rs).

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sshd::{die_with_parent, parse_cast, run, wait_timeout, Lab, Vendor, TARGET};
use common::{assert_ok, stdout, Backend};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

backend_tests! {
    fn search_replay_and_bundle_of_a_real_session;
}

/// Runs `ssh -tt` for `v`, writing each chunk of `steps` after its delay; returns stdout.
fn typed_session(lab: &Lab, v: &Vendor, steps: &[(u64, &str)]) -> String {
    let mut cmd = lab.ssh(v, &["-tt"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = die_with_parent(&mut cmd).spawn().expect("spawn ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut so = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    for (delay, text) in steps {
        std::thread::sleep(Duration::from_millis(*delay));
        stdin.write_all(text.as_bytes()).expect("type");
        stdin.flush().expect("flush");
    }
    let st = wait_timeout(&mut child, T).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("ssh did not end")
    });
    drop(stdin);
    let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    assert!(st.success(), "ssh failed ({st}): {out}");
    out
}

/// Waits until `recordings search ARGS… --json` finds something; returns the result.
fn search_until_found(lab: &Lab, args: &[&str]) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let mut a = vec!["recordings", "search"];
        a.extend_from_slice(args);
        a.push("--json");
        let found = lab.install.json(&a);
        let found = found.as_array().cloned().unwrap_or_default();
        if !found.is_empty() {
            return found;
        }
        assert!(Instant::now() < end, "search {args:?} found nothing\ngateway log:\n{}", lab.gateway_log());
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn evidence_pub(lab: &Lab) -> PathBuf {
    let line = lab.install.ok(&["evidence", "key"]);
    assert!(line.starts_with("ssh-ed25519 "), "{line}");
    let p = lab.install.scratch().join("evidence.pub");
    std::fs::write(&p, &line).expect("write key");
    p
}

fn sh(cmd: &str, dir: &Path) -> std::process::Output {
    run(Command::new("bash").arg("-c").arg(cmd).current_dir(dir), b"", T)
}

/// The auditor's path: a word typed in a real session is found at its offset (and filters
/// narrow it), the screen at that moment and the transcript show it, and the session's
/// bundle verifies with penstock and with stock tools only.
fn search_replay_and_bundle_of_a_real_session(b: Backend) {
    let lab = Lab::new(b);
    let v = lab.vendor();
    let out = typed_session(
        &lab,
        &v,
        &[(0, "echo first-$((20+22))\n"), (3000, "echo write_register 40001 $((10+7))\n"), (500, "exit\n")],
    );
    assert!(out.contains("write_register 40001 17"), "{out}");
    let s = lab.ended_session(&v.name);
    let id = s["id"].as_str().expect("id").to_string();
    let cast = parse_cast(Path::new(s["recording_path"].as_str().expect("recording")));
    let typed_at = cast
        .events
        .iter()
        .find(|e| e.1 == "i" && e.2.contains("write_register"))
        .unwrap_or_else(|| panic!("keystrokes not recorded: {:?}", cast.events))
        .0;
    assert!(typed_at > 1.0, "the second line was typed 3 s after the first: {typed_at}");

    // Search (the server's indexer picks the ended session up by itself).
    let found = search_until_found(&lab, &["write_register", "--target", "plc-*"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["session"], id.as_str());
    assert_eq!(found[0]["user"], v.name.as_str());
    assert_eq!(found[0]["target"], TARGET);
    let hits = found[0]["hits"].as_array().expect("hits");
    let typed = hits.iter().find(|h| h["kind"] == "in").unwrap_or_else(|| panic!("the typed line is a hit: {hits:?}"));
    assert_eq!(typed["text"], "echo write_register 40001 $((10+7))");
    let offset = typed["offset"].as_f64().expect("offset");
    assert!((offset - typed_at).abs() < 0.01, "hit at {offset}, typed at {typed_at}");
    assert!(
        hits.iter().any(|h| h["kind"] == "out" && h["text"].as_str().is_some_and(|t| t == "write_register 40001 17")),
        "the output line is a hit too: {hits:?}"
    );
    for none in [
        vec!["write_register", "--target", "hmi-*"],
        vec!["write_register", "--user", "nobody"],
        vec!["write_register", "--org", "Other Org"],
        vec!["write_register", "--until", "2000-01-01"],
        vec!["never-typed-word"],
    ] {
        let mut a = vec!["recordings", "search"];
        a.extend_from_slice(&none);
        a.push("--json");
        assert_eq!(lab.install.json(&a), Value::Array(vec![]), "{none:?}");
    }
    let text = lab.install.ok(&["recordings", "search", "write_register", "--org", "Acme Automation"]);
    assert!(text.starts_with(&id) && text.contains(&format!("{}@{TARGET}", v.name)), "{text}");
    assert!(text.contains(&format!("{} in \"echo write_register", &common_offset(offset))), "{text}");
    // reindex rebuilds the same answer.
    assert!(lab.install.ok(&["recordings", "reindex"]).contains("Indexed 1 recording"));
    assert_eq!(search_until_found(&lab, &["40001"])[0]["session"], id.as_str());

    // Replay: the screen before and after the line, and the transcript.
    let prefix = &id[..8];
    let before = lab.install.ok(&["replay", prefix, "--at", &format!("{}", typed_at - 0.5), "--text"]);
    assert!(before.contains("first-42") && !before.contains("40001 17"), "{before}");
    let after = lab.install.ok(&["replay", prefix, "--at", &format!("{}", typed_at + 2.0), "--text"]);
    assert!(after.contains("first-42") && after.contains("write_register 40001 17"), "{after}");
    let tr = lab.install.ok(&["replay", prefix, "--transcript"]);
    assert!(tr.starts_with(&format!("# session {id}")), "{tr}");
    assert!(
        tr.lines().any(|l| l.ends_with(" in   echo write_register 40001 $((10+7))")
            && l.starts_with(&common_offset(typed_at)[..7])),
        "{tr}"
    );
    assert!(tr.lines().any(|l| l.contains(" out  write_register 40001 17")), "{tr}");
    let played = lab.install.run(&["replay", prefix]);
    let played_text = assert_ok("replay", &played);
    assert!(played_text.contains("40001 17"), "{played_text}");

    // The bundle, checked by penstock and by stock tools only.
    let key = evidence_pub(&lab);
    let bundle = lab.install.scratch().join("session.tar");
    let msg = lab.install.ok(&["evidence", "export", "--session", prefix, "-o", bundle.to_str().expect("path")]);
    assert!(msg.contains("1 session(s), 1 recording file(s)"), "{msg}");
    let ok = lab.install.ok(&["evidence", "verify", bundle.to_str().expect("path"), "--key", key.to_str().expect("k")]);
    assert!(ok.contains("verified") && ok.contains("(the given key)"), "{ok}");
    let x = lab.install.scratch().join("x");
    std::fs::create_dir(&x).expect("mkdir");
    assert_ok("tar", &sh(&format!("tar xf '{}'", bundle.display()), &x));
    let folder = std::fs::read_dir(&x).expect("ls").flatten().next().expect("one folder").path();
    assert!(folder.join(format!("recordings/{id}.cast")).is_file());
    let readme = std::fs::read_to_string(folder.join("README.txt")).expect("README");
    assert!(readme.contains("sha256sum -c") && readme.contains("ssh-keygen -Y verify"), "{readme}");
    let sums = assert_ok("sha256sum -c", &sh("sha256sum -c --strict MANIFEST", &folder));
    assert!(sums.contains(&format!("recordings/{id}.cast: OK")), "{sums}");
    // allowed_signers written from the key obtained out of band, as the README says.
    let own = lab.install.scratch().join("allowed_signers");
    let keyline = std::fs::read_to_string(&key).expect("key");
    let fields: Vec<&str> = keyline.split_whitespace().collect();
    std::fs::write(&own, format!("penstock namespaces=\"penstock-evidence\" {} {}\n", fields[0], fields[1]))
        .expect("allowed_signers");
    let v1 = sh(
        &format!(
            "ssh-keygen -Y verify -f '{}' -I penstock -n penstock-evidence -s MANIFEST.sig < MANIFEST",
            own.display()
        ),
        &folder,
    );
    assert!(assert_ok("ssh-keygen -Y verify", &v1).contains("Good \"penstock-evidence\" signature"), "{v1:?}");
    let v2 = sh(
        "ssh-keygen -Y verify -f allowed_signers -I penstock -n penstock-evidence -s MANIFEST.sig < MANIFEST",
        &folder,
    );
    assert_ok("ssh-keygen -Y verify (bundled allowed_signers)", &v2);
    // The same recipe refuses an edited MANIFEST.
    std::fs::write(folder.join("MANIFEST"), std::fs::read_to_string(folder.join("MANIFEST")).expect("m") + "\n")
        .expect("edit");
    let bad = sh(
        "ssh-keygen -Y verify -f allowed_signers -I penstock -n penstock-evidence -s MANIFEST.sig < MANIFEST",
        &folder,
    );
    assert!(!bad.status.success(), "{}", stdout(&bad));

    live_session_is_searchable_while_it_runs(&lab);
    lab.finish();
}

/// What a vendor prints in a session still running is found by search before the session
/// ends (the indexer follows the recording as it is written), and is not indexed twice when
/// the session ends.
fn live_session_is_searchable_while_it_runs(lab: &Lab) {
    // Another vendor: the first one's TOTP code of this step is spent (replay guard).
    let v = lab.vendor();
    let mut cmd = lab.ssh(&v, &["-tt"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = die_with_parent(&mut cmd).spawn().expect("spawn ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut so = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    stdin.write_all(b"echo live-$((6*7))-marker\n").expect("type");
    stdin.flush().expect("flush");
    let found = search_until_found(lab, &["live-42-marker"]);
    assert!(child.try_wait().expect("ssh state").is_none(), "the session is still running");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["end_reason"], Value::Null, "found while live: {found:?}");
    let live_id = found[0]["session"].as_str().expect("session").to_string();
    assert!(lab.sessions(true).iter().any(|s| s["id"] == live_id.as_str()), "the hit is the live session");
    stdin.write_all(b"exit\n").expect("type");
    drop(stdin);
    let st = wait_timeout(&mut child, T).expect("ssh ends");
    assert!(st.success(), "{st}");
    let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    assert!(out.contains("live-42-marker"), "{out}");
    // Ended: the same line once (the follower finished the index; nobody indexed it again).
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let found = search_until_found(lab, &["live-42-marker"]);
        if found[0]["end_reason"] != Value::Null {
            let hits = found[0]["hits"].as_array().expect("hits");
            let outs = hits.iter().filter(|h| h["kind"] == "out" && h["text"] == "live-42-marker").count();
            assert_eq!(outs, 1, "{hits:?}");
            break;
        }
        assert!(Instant::now() < end, "search still shows the session live: {found:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Two indexer passes later, still once.
    std::thread::sleep(Duration::from_secs(5));
    let hits = search_until_found(lab, &["live-42-marker"])[0]["hits"].clone();
    let outs = hits.as_array().expect("hits").iter().filter(|h| h["kind"] == "out").count();
    assert_eq!(outs, 1, "{hits:?}");
}

/// `HH:MM:SS` as search prints offsets.
fn common_offset(t: f64) -> String {
    let s = t as u64;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

// ---------------------------------------------------------------------------------------------
// Hostile output

/// A target that prints OSC 52 (clipboard), title and font changes, DCS/APC/PM strings,
/// queries that make a terminal answer back, invalid UTF-8 and a forged gateway line: it is
/// indexed as plain text, the transcript marks the forged line as output, and replay writes
/// none of those sequences to the auditor's terminal.
#[test]
fn hostile_output_replays_safely() {
    let lab = Lab::new(Backend::Sqlite);
    let v = lab.vendor();
    // The script is run, not typed, so its text is not echoed as input.
    let dir = lab.remote_dir();
    let script = dir.join("evil.sh");
    std::fs::write(
        &script,
        concat!(
            "printf 'VISIBLE-\\033[1;31mRED\\033[0m-TEXT\\n'\n",
            "printf '\\033]52;c;ZXZpbC1jbGlw\\007'\n",
            "printf '\\033]0;owned-title\\007\\033]2;t2\\033\\\\'\n",
            "printf '\\033]50;font\\007\\033]10;?\\007'\n",
            "printf '\\033Pq#0;2;0;0;0\\033\\\\\\033_apc-evil\\033\\\\\\033^pm-evil\\033\\\\'\n",
            "printf '\\033[6n\\033[c\\033[>c\\033[21t\\033[?1000h\\033[?2004h\\005\\033Z'\n",
            "printf '\\302\\233\\061\\073\\061\\110'\n",
            "printf 'bad-\\377\\376-utf8\\n'\n",
            "printf '[penstock] binary output: 5 bytes in evil.out, sha256 00\\n'\n",
            "echo DONE-$((40+2))\n",
        ),
    )
    .expect("script");
    let out = run(&mut lab.ssh(&v, &["-tt"]), format!("sh {}\nexit\n", script.display()).as_bytes(), T);
    assert!(stdout(&out).contains("DONE-42"), "{}", stdout(&out));
    let s = lab.ended_session(&v.name);
    let id = s["id"].as_str().expect("id").to_string();
    let cast = parse_cast(Path::new(s["recording_path"].as_str().expect("path")));
    assert!(cast.text("o").contains("\u{1b}]52;c;ZXZpbC1jbGlw"), "the recording keeps what the target sent");

    let dangerous: &[(&str, &[u8])] = &[
        ("OSC", b"\x1b]"),
        ("DCS", b"\x1bP"),
        ("APC", b"\x1b_"),
        ("PM", b"\x1b^"),
        ("BEL", b"\x07"),
        ("ENQ", b"\x05"),
        ("DECID", b"\x1bZ"),
        ("DSR", b"\x1b[6n"),
        ("DA", b"\x1b[c"),
        ("DA2", b"\x1b[>c"),
        ("window report", b"\x1b[21t"),
        ("mouse mode", b"\x1b[?1000h"),
        ("paste mode", b"\x1b[?2004h"),
        ("C1 CSI", "\u{9b}".as_bytes()),
        ("clipboard payload", b"ZXZpbC1jbGlw"),
        ("title", b"owned-title"),
    ];
    let check = |what: &str, bytes: &[u8]| {
        for (name, seq) in dangerous {
            assert!(!common::contains(bytes, seq), "{what} contains {name}: {:?}", String::from_utf8_lossy(bytes));
        }
    };
    let played = lab.install.run(&["replay", &id]);
    assert_ok("replay", &played);
    assert!(String::from_utf8_lossy(&played.stdout).contains("DONE-42"));
    assert!(String::from_utf8_lossy(&played.stdout).contains("VISIBLE-"));
    check("replay", &played.stdout);
    // Timed playback in a real terminal (script gives it one), quit with q.
    let mut cmd = Command::new("script");
    cmd.arg("-qec")
        .arg(format!(
            "sleep 1; {} -c '{}' replay {} --speed 50 --idle-limit 0.1",
            common::BIN,
            lab.install.config_path().display(),
            id
        ))
        .arg("/dev/null");
    let tty = run(&mut cmd, b"", T);
    assert_ok("replay in a terminal", &tty);
    assert!(String::from_utf8_lossy(&tty.stdout).contains("DONE-42"), "{}", stdout(&tty));
    check("replay in a terminal", &tty.stdout);
    for at in ["0.5", "30"] {
        let screen = lab.install.run(&["replay", &id, "--at", at, "--text"]);
        check("replay --at --text", &screen.stdout);
        assert!(screen.stdout.iter().all(|&b| b == b'\n' || b >= 0x20), "{:?}", stdout(&screen));
    }
    let tr = lab.install.run(&["replay", &id, "--transcript"]);
    check("transcript", &tr.stdout);
    assert!(tr.stdout.iter().all(|&b| b == b'\n' || b >= 0x20), "{:?}", stdout(&tr));
    let tr = stdout(&tr);
    assert!(tr.lines().any(|l| l.contains(" out  [penstock] binary output: 5 bytes in evil.out")), "{tr}");
    assert!(!tr.lines().any(|l| l.contains(" note ") && l.contains("evil.out")), "{tr}");
    assert!(tr.contains("VISIBLE-RED-TEXT"), "{tr}");

    // Indexed as text: the visible words are found, escape-sequence payloads are not.
    let found = search_until_found(&lab, &["VISIBLE"]);
    assert_eq!(found[0]["session"], id.as_str());
    for hidden in ["ZXZpbC1jbGlw", "owned-title", "apc-evil"] {
        assert_eq!(lab.install.json(&["recordings", "search", hidden, "--json"]), Value::Array(vec![]), "{hidden}");
    }
    let forged = search_until_found(&lab, &["evil.out"]);
    assert!(forged[0]["hits"].as_array().expect("hits").iter().all(|h| h["kind"] == "out"), "{forged:?}");
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// Tampering

type Files = Vec<(String, Vec<u8>)>;

fn unpack(path: &Path) -> Files {
    let mut files = Vec::new();
    let f = std::fs::File::open(path).expect("open bundle");
    penstock::evidence::tar::read(f, |e| {
        if let penstock::evidence::tar::Entry::File(p, _, r) = e {
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            files.push((p, v));
        }
        Ok(())
    })
    .expect("read bundle");
    files
}

fn pack(files: &Files, path: &Path) {
    let mut w = penstock::evidence::tar::Writer::new(Vec::new(), 1_700_000_000);
    for (p, d) in files {
        w.bytes(p, d).expect("entry");
    }
    std::fs::write(path, w.finish().expect("finish")).expect("write bundle");
}

fn file<'a>(files: &'a mut Files, suffix: &str) -> &'a mut Vec<u8> {
    &mut files.iter_mut().find(|(p, _)| p.ends_with(suffix)).unwrap_or_else(|| panic!("no {suffix}")).1
}

/// Rewrites MANIFEST for the files as they are now and signs it with `key` (what someone
/// holding a key, but unable to rewrite the audit chain's hashes, could do).
fn resign(files: &mut Files, key: &russh::keys::ssh_key::PrivateKey, bundled_pub: bool) {
    use sha2::Digest;
    let top = files[0].0.split('/').next().expect("top").to_string();
    let mut manifest = String::new();
    let mut listed: Vec<(String, String)> = files
        .iter()
        .filter(|(p, _)| !p.ends_with("/MANIFEST") && !p.ends_with("/MANIFEST.sig"))
        .map(|(p, d)| (p[top.len() + 1..].to_string(), hex::encode(sha2::Sha256::digest(d))))
        .collect();
    listed.sort();
    for (p, h) in listed {
        manifest.push_str(&format!("{h}  {p}\n"));
    }
    if bundled_pub {
        *file(files, "/evidence.pub") = format!("{}\n", penstock::evidence::public_line(key.public_key())).into_bytes();
        return resign(files, key, false);
    }
    let sig = penstock::evidence::sign(key, manifest.as_bytes()).expect("sign");
    *file(files, "/MANIFEST") = manifest.into_bytes();
    *file(files, "/MANIFEST.sig") = sig.into_bytes();
}

/// `evidence verify` passes on a fresh bundle (with a binary side file) and fails, naming the
/// cause on a line of its own, for each kind of tampering.
#[test]
fn evidence_verify_names_each_tampering() {
    let lab = Lab::new(Backend::Sqlite);
    let v = lab.vendor();
    let out = run(&mut lab.ssh(&v, &["-tt"]), b"echo shell-$((1+1))\nexit\n", T);
    assert_ok("shell", &out);
    lab.ended_session(&v.name);
    let w = lab.vendor();
    let bin = run(lab.ssh(&w, &[]).arg("head -c 20000 /dev/urandom"), b"", T);
    assert_eq!(bin.stdout.len(), 20000);
    let sw = lab.ended_session(&w.name);
    let wid = sw["id"].as_str().expect("id").to_string();
    // Replay names the side file and never writes its bytes.
    let played = lab.install.run(&["replay", &wid]);
    let text = assert_ok("replay", &played);
    assert!(text.contains(&format!("recorded byte-exact in {wid}.out")), "{text}");
    assert!(!common::contains(&played.stdout, &bin.stdout[..64]), "side file content was replayed");

    let key = evidence_pub(&lab);
    let bundle = lab.install.scratch().join("range.tar");
    let b = bundle.to_str().expect("path").to_string();
    let now = common::sshd::now();
    lab.install.ok(&[
        "evidence",
        "export",
        "--since",
        &(now - 3600).to_string(),
        "--until",
        &(now + 60).to_string(),
        "-o",
        &b,
    ]);
    let k = key.to_str().expect("key").to_string();
    let ok = lab.install.ok(&["evidence", "verify", &b, "--key", &k]);
    assert!(ok.contains("verified") && ok.contains("3 recording files match"), "{ok}");
    let original = unpack(&bundle);
    assert!(original.iter().any(|(p, _)| p.ends_with(&format!("recordings/{wid}.out"))), "side file in the bundle");
    let gateway_key = {
        let cfg = penstock::config::Config::load(&lab.install.config_path()).expect("config");
        penstock::evidence::load_key(&cfg).expect("key")
    };
    let other_key = penstock::keys::generate_ed25519();

    let verify_fails = |name: &str, files: &Files, expect: &[&str]| {
        let p = lab.install.scratch().join(format!("{name}.tar"));
        pack(files, &p);
        let out = lab.install.run(&["evidence", "verify", p.to_str().expect("p"), "--key", &k]);
        let msg = common::assert_fails(&format!("verify {name}"), &out);
        assert!(msg.contains("failed verification"), "{msg}");
        let lines = stdout(&out);
        for e in expect {
            assert!(lines.lines().any(|l| l.starts_with(e) || l.contains(e)), "{name}: no line {e:?} in:\n{lines}");
        }
    };
    // Repacked untouched, it still verifies.
    let p = lab.install.scratch().join("same.tar");
    pack(&original, &p);
    lab.install.ok(&["evidence", "verify", p.to_str().expect("p"), "--key", &k]);

    let mut f = original.clone();
    let cast = file(&mut f, &format!("{wid}.cast"));
    let n = cast.len() / 2;
    cast[n] ^= 0x01;
    verify_fails("flipped", &f, &[&format!("changed: recordings/{wid}.cast")]);

    let mut f = original.clone();
    let side = file(&mut f, &format!("{wid}.out"));
    side[100] ^= 0x80;
    resign(&mut f, &gateway_key, false);
    verify_fails("side-file", &f, &[&format!("changed: recordings/{wid}.out (size or SHA-256 differs")]);

    let mut f = original.clone();
    f.retain(|(p, _)| !p.ends_with("records/grants.json"));
    verify_fails("removed", &f, &["missing: records/grants.json"]);

    let mut f = original.clone();
    let top = f[0].0.split('/').next().expect("top").to_string();
    f.push((format!("{top}/recordings/extra.cast"), b"{}".to_vec()));
    verify_fails("added", &f, &["added: recordings/extra.cast"]);

    let mut f = original.clone();
    let sessions = file(&mut f, "records/sessions.json");
    let text = String::from_utf8(sessions.clone()).expect("utf8").replacen("\"bytes_up\": ", "\"bytes_up\": 1", 1);
    *sessions = text.into_bytes();
    verify_fails("edited-json", &f, &["changed: records/sessions.json"]);

    // A forged signature: edited, re-listed and signed by another key that also replaced
    // evidence.pub. Only the gateway's key (given with --key) tells.
    let mut f = original.clone();
    let sessions = file(&mut f, "records/sessions.json");
    *sessions = String::from_utf8(sessions.clone()).expect("utf8").replacen("closed", "error", 1).into_bytes();
    resign(&mut f, &other_key, true);
    verify_fails("forged", &f, &["wrong key: MANIFEST.sig is signed by", "wrong key: evidence.pub in the bundle"]);
    // A signature over another MANIFEST.
    let mut f = original.clone();
    let m = file(&mut f, "/MANIFEST");
    m.extend_from_slice(b"0000000000000000000000000000000000000000000000000000000000000000  ghost\n");
    verify_fails("bad-sig", &f, &["bad signature: MANIFEST.sig does not match MANIFEST", "missing: ghost"]);

    // A chain segment with an event removed, re-listed and re-signed with the gateway's own key:
    // the chain's hashes still tell.
    let mut f = original.clone();
    let seg = file(&mut f, "audit/segment.jsonl");
    let lines: Vec<String> = String::from_utf8(seg.clone()).expect("utf8").lines().map(str::to_string).collect();
    assert!(lines.len() >= 3, "{lines:?}");
    let removed: Value = serde_json::from_str(&lines[1]).expect("event");
    let kept: Vec<String> = lines.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| l.clone()).collect();
    *seg = (kept.join("\n") + "\n").into_bytes();
    resign(&mut f, &gateway_key, false);
    verify_fails("chain", &f, &[&format!("chain break: event {} is missing", removed["seq"])]);
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// Retention and legal hold

/// Retention deletes recordings older than `retain_days` with a `recording.deleted` event
/// holding the hash they had, keeps those on legal hold, drops them from the search index; and
/// `audit verify` tells a recording retention deleted from one that went missing.
#[test]
fn retention_deletes_old_recordings_except_held_ones() {
    let lab = Lab::with(Backend::Sqlite, "", &[("PENSTOCK_RECORDINGS_RETAIN_DAYS", "30")]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let v = lab.vendor();
        let out = run(&mut lab.ssh(&v, &["-tt"]), format!("echo retained-{i}-$((1+1))\nexit\n").as_bytes(), T);
        assert_ok("shell", &out);
        let s = lab.ended_session(&v.name);
        ids.push((s["id"].as_str().expect("id").to_string(), s["recording_path"].as_str().expect("p").to_string()));
    }
    search_until_found(&lab, &["retained-0-2"]);
    // The first two ended 40 days ago; the second is on hold; the third is recent.
    for (id, _) in &ids[..2] {
        lab.install.exec_sql(&format!("UPDATE sessions SET ended_at = ended_at - 40 * 86400 WHERE id = '{id}'"));
    }
    let held = lab.install.ok(&["recordings", "hold", &ids[1].0[..8], "--reason", "incident 2026-113"]);
    assert!(held.contains("on legal hold"), "{held}");
    assert!(lab.install.ok(&["recordings", "holds"]).contains("incident 2026-113"));
    let out = lab.install.command(&["recordings", "expire"]).env("PENSTOCK_RECORDINGS_RETAIN_DAYS", "30").output();
    let out = out.expect("run expire");
    let msg = assert_ok("expire", &out);
    assert!(msg.contains("deleted 1 recording"), "{msg}");
    assert!(!Path::new(&ids[0].1).exists(), "old recording deleted");
    assert!(Path::new(&ids[1].1).exists(), "held recording kept");
    assert!(Path::new(&ids[2].1).exists(), "recent recording kept");
    let deleted = lab.audit_events("recording.deleted");
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["details"]["session"], ids[0].0.as_str());
    let sha = lab.sessions(false).into_iter().find(|s| s["id"] == ids[0].0.as_str()).expect("row")["recording_sha256"]
        .clone();
    assert_eq!(deleted[0]["details"]["recording_sha256"], sha);
    assert_eq!(lab.install.json(&["recordings", "search", "retained-0-2", "--json"]), Value::Array(vec![]));
    let held_ev = lab.audit_events("recording.held");
    assert_eq!(held_ev[0]["details"]["reason"], "incident 2026-113");
    // A second run finds nothing more to do.
    let out = lab.install.command(&["recordings", "expire"]).env("PENSTOCK_RECORDINGS_RETAIN_DAYS", "30").output();
    assert!(assert_ok("expire again", &out.expect("run")).contains("deleted 0 recording"));
    let verify = lab.install.ok(&["audit", "verify"]);
    assert!(verify.contains("1 recording(s) deleted by retention"), "{verify}");
    // Lifting the hold lets retention delete it next time.
    lab.install.ok(&["recordings", "unhold", &ids[1].0[..8]]);
    assert_eq!(lab.audit_events("recording.released").len(), 1);
    // A recording removed by hand is missing, not deleted.
    std::fs::remove_file(&ids[2].1).expect("rm");
    let out = lab.install.run(&["audit", "verify"]);
    let msg = common::assert_fails("audit verify", &out);
    assert!(msg.contains(&ids[2].0), "{msg}");
    assert!(stdout(&out).contains("cannot be read: it is missing (no recording.deleted event"), "{}", stdout(&out));
    assert!(!stdout(&out).contains(&format!("session {}:", ids[0].0)), "{}", stdout(&out));
}

// ---------------------------------------------------------------------------------------------
// SIEM streaming

/// Debian's rsyslogd on loopback ports of its own, writing what arrives over TCP and over UDP
/// to two files (raw messages, one per line).
struct Rsyslog {
    dir: tempfile::TempDir,
    tcp: u16,
    udp: u16,
    tls: bool,
    child: Option<std::process::Child>,
}

impl Rsyslog {
    fn start() -> Rsyslog {
        let dir = tempfile::Builder::new().prefix("penstock-rsyslog-").tempdir().expect("temp dir");
        let mut r =
            Rsyslog { dir, tcp: common::sshd::free_port(), udp: common::sshd::free_port(), tls: false, child: None };
        r.restart();
        r
    }

    /// A receiver for syslog over TLS (RFC 5425) on its TCP port, with a certificate for
    /// 127.0.0.1 issued by a CA of its own (`ca.pem` in its folder).
    fn start_tls() -> Rsyslog {
        let dir = tempfile::Builder::new().prefix("penstock-rsyslog-tls-").tempdir().expect("temp dir");
        let script = "set -e
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2               -subj /CN=penstock-test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out srv.csr -subj /CN=127.0.0.1
            printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
            openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext.cnf
";
        assert_ok("openssl", &sh(script, dir.path()));
        let mut r =
            Rsyslog { dir, tcp: common::sshd::free_port(), udp: common::sshd::free_port(), tls: true, child: None };
        r.restart();
        r
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn restart(&mut self) {
        let d = self.dir.path();
        let conf = if self.tls {
            format!(
                "global(workDirectory=\"{d}\" DefaultNetstreamDriver=\"gtls\" \
                 DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" DefaultNetstreamDriverCertFile=\"{d}/cert.pem\" \
                 DefaultNetstreamDriverKeyFile=\"{d}/key.pem\")\n\
                 module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n\
                 template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
                 ruleset(name=\"tls\") {{ action(type=\"omfile\" file=\"{d}/tls.log\" template=\"raw\") }}\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tcp}\" ruleset=\"tls\")\n",
                d = d.display(),
                tcp = self.tcp,
            )
        } else {
            self.plain_conf()
        };
        self.launch(&conf);
    }

    fn plain_conf(&self) -> String {
        let d = self.dir.path();
        format!(
            "global(workDirectory=\"{d}\")\n\
             module(load=\"imtcp\")\nmodule(load=\"imudp\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             ruleset(name=\"tcp\") {{ action(type=\"omfile\" file=\"{d}/tcp.log\" template=\"raw\") }}\n\
             ruleset(name=\"udp\") {{ action(type=\"omfile\" file=\"{d}/udp.log\" template=\"raw\") }}\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tcp}\" ruleset=\"tcp\")\n\
             input(type=\"imudp\" address=\"127.0.0.1\" port=\"{udp}\" ruleset=\"udp\")\n",
            d = d.display(),
            tcp = self.tcp,
            udp = self.udp,
        )
    }

    fn launch(&mut self, conf: &str) {
        let d = self.dir.path();
        std::fs::write(d.join("rsyslog.conf"), conf).expect("conf");
        let log = std::fs::File::create(d.join("rsyslogd.out")).expect("log");
        let child = die_with_parent(
            Command::new("rsyslogd")
                .args(["-n", "-f"])
                .arg(d.join("rsyslog.conf"))
                .arg("-i")
                .arg(d.join("rsyslogd.pid"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup"))
                .stderr(log),
        )
        .spawn()
        .expect("cannot run rsyslogd (install rsyslog)");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.tcp)).is_err() {
            assert!(
                Instant::now() < end,
                "rsyslogd did not listen: {}",
                std::fs::read_to_string(d.join("rsyslogd.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            if wait_timeout(&mut c, Duration::from_secs(5)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Sequence numbers received, in order of arrival (repeats kept).
    fn seqs(&self, file: &str) -> Vec<i64> {
        std::fs::read_to_string(self.dir.path().join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split("seq=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect()
    }

    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn head(install: &common::Install) -> i64 {
    install.ok(&["audit", "export"]).lines().count() as i64
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    // Delivery retries back off up to 30 s after an outage: allow for one full backoff and a
    // loaded machine.
    let end = Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every sequence number from 1 to `head` arrived, and each first arrived after the one before.
fn all_in_order(seqs: &[i64], head: i64) -> bool {
    let mut firsts = Vec::new();
    for s in seqs {
        if !firsts.contains(s) {
            firsts.push(*s);
        }
    }
    firsts == (1..=head).collect::<Vec<_>>()
}

/// Sequence numbers in a JSON-lines SIEM file, in order of arrival (repeats kept).
fn jsonl_seqs(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["seq"].as_i64())
        .collect()
}

/// Two gateways on one PostgreSQL ship the chain to a destination once, not twice: one holds
/// the destination's lease, and when it stops the other takes over where the cursor stands.
#[test]
fn siem_ships_from_one_gateway_of_several_on_postgres() {
    let install = common::Install::new(Backend::Postgres);
    let jsonl = install.scratch().join("audit.jsonl");
    let mut cfg = std::fs::read_to_string(install.config_path()).expect("config");
    cfg.push_str(&format!(
        "\n[[siem.destinations]]\nname = \"archive\"\nkind = \"file\"\npath = \"{}\"\n",
        jsonl.display()
    ));
    std::fs::write(install.config_path(), cfg).expect("config");
    let add_users = |n: usize| {
        for _ in 0..n {
            let name = format!("u{}", common::random_hex(4));
            install.ok_stdin(&["user", "add", &name, "--role", "auditor", "--password-stdin"], b"Pw-12345678-x\n");
        }
    };
    let mut a = common::sshd::Gateway::start(&install);
    let mut b = common::sshd::Gateway::start_env(&install, &[("PENSTOCK_NODE_ID_FILE", "node_id_b")]);
    // Events made while both run, in several bursts so both get a chance at each of them.
    for _ in 0..4 {
        add_users(2);
        std::thread::sleep(Duration::from_millis(700));
    }
    let h = head(&install);
    wait_until("the file has the chain", || all_in_order(&jsonl_seqs(&jsonl), h));
    std::thread::sleep(Duration::from_secs(2));
    let seqs = jsonl_seqs(&jsonl);
    assert_eq!(seqs.len() as i64, h, "each event shipped once by one of two gateways: {seqs:?}");
    // Whichever held the lease, each stops in turn and the other ships what follows.
    a.stop();
    add_users(2);
    let h = head(&install);
    wait_until("the second gateway ships after the first stopped", || all_in_order(&jsonl_seqs(&jsonl), h));
    let mut a2 = common::sshd::Gateway::start(&install);
    b.stop();
    add_users(2);
    let h = head(&install);
    wait_until("the restarted first gateway ships after the second stopped", || all_in_order(&jsonl_seqs(&jsonl), h));
    a2.stop();
}

/// Audit events reach a real rsyslog over TCP (octet counting), TLS (RFC 5425, the receiver's
/// certificate checked against its CA) and UDP as RFC 5424 messages, and a JSON-lines file, in chain order; with the receiver down nothing is lost (lag and the
/// error show in `siem status`), and after a gateway restart shipping resumes at its cursor.
#[test]
fn siem_delivers_every_event_through_outage_and_restart() {
    let install = common::Install::new(Backend::Sqlite);
    let mut rs = Rsyslog::start();
    let tls = Rsyslog::start_tls();
    let jsonl = install.scratch().join("audit.jsonl");
    let mut cfg = std::fs::read_to_string(install.config_path()).expect("config");
    cfg.push_str(&format!(
        "\n[[siem.destinations]]\nname = \"soc-tcp\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{}\"\n\
         \n[[siem.destinations]]\nname = \"soc-udp\"\nkind = \"udp\"\naddress = \"127.0.0.1:{}\"\n\
         \n[[siem.destinations]]\nname = \"archive\"\nkind = \"file\"\npath = \"{}\"\n\
         \n[[siem.destinations]]\nname = \"soc-tls\"\nkind = \"tls\"\naddress = \"127.0.0.1:{}\"\nca = \"{}\"\n",
        rs.tcp,
        rs.udp,
        jsonl.display(),
        tls.tcp,
        tls.ca().display()
    ));
    std::fs::write(install.config_path(), cfg).expect("config");
    let add_users = |n: usize| {
        for _ in 0..n {
            let name = format!("u{}", common::random_hex(4));
            install.ok_stdin(&["user", "add", &name, "--role", "auditor", "--password-stdin"], b"Pw-12345678-x\n");
        }
    };
    add_users(2);
    let mut gw = common::sshd::Gateway::start(&install);
    let h = head(&install);
    wait_until("TCP, UDP and TLS receive the chain", || {
        all_in_order(&rs.seqs("tcp.log"), h)
            && all_in_order(&rs.seqs("udp.log"), h)
            && all_in_order(&tls.seqs("tls.log"), h)
    });
    assert!(tls.lines("tls.log").iter().all(|l| l.starts_with('<') && l.contains("[penstock@32473 seq=")));
    let line = rs.lines("tcp.log").into_iter().find(|l| l.contains("seq=\"2\"")).expect("event 2");
    assert!(
        line.starts_with("<85>1 ") && line.contains(" penstock ") && line.contains("[penstock@32473 seq=\"2\""),
        "{line}"
    );
    assert!(line.contains(" user.added [") && line.ends_with('}'), "{line}");

    // Receiver down: events wait, the failure and lag show.
    rs.stop();
    add_users(3);
    wait_until("siem status shows the outage", || {
        let st = install.json(&["siem", "status", "--json"]);
        let tcp = st.as_array().and_then(|a| a.iter().find(|d| d["name"] == "soc-tcp").cloned()).unwrap_or_default();
        tcp["lag"].as_i64().unwrap_or(0) > 0 && tcp["last_error"].is_string()
    });
    let text = install.ok(&["siem", "status"]);
    assert!(text.contains("soc-tcp (tcp 127.0.0.1:") && text.contains("last failure"), "{text}");
    rs.restart();
    let h = head(&install);
    wait_until("TCP catches up after the outage", || all_in_order(&rs.seqs("tcp.log"), h));

    // Gateway restart: events made while it is down are shipped by the next one.
    gw.stop();
    add_users(2);
    let mut gw = common::sshd::Gateway::start(&install);
    let h = head(&install);
    wait_until("TCP and TLS catch up after the restart", || {
        all_in_order(&rs.seqs("tcp.log"), h) && all_in_order(&tls.seqs("tls.log"), h)
    });
    wait_until("the file has the whole chain", || {
        let lines = std::fs::read_to_string(&jsonl).unwrap_or_default();
        let seqs: Vec<i64> =
            lines.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()?["seq"].as_i64()).collect();
        all_in_order(&seqs, h)
    });
    // The file holds the exported chain verbatim.
    let export: Vec<String> = install.ok(&["audit", "export"]).lines().map(str::to_string).collect();
    let file: Vec<String> = std::fs::read_to_string(&jsonl).expect("jsonl").lines().map(str::to_string).collect();
    for l in &export {
        assert!(file.contains(l), "missing from the JSON-lines file: {l}");
    }
    let st = install.json(&["siem", "status", "--json"]);
    for d in st.as_array().expect("list") {
        if d["name"] != "soc-udp" {
            assert_eq!(d["lag"], 0, "{d}");
            assert!(d["last_error"].is_null(), "{d}");
        }
    }
    gw.stop();
}

// ---------------------------------------------------------------------------------------------
// Bundles by request

/// `evidence export --request N`: the request, its approval, the grant it issued, the sessions
/// under that grant, and the chain segment from the request's creation to the session's end.
#[test]
fn bundle_of_a_request_holds_its_approvals_grant_and_sessions() {
    let policy = format!(
        "[policy]\nname = \"jit-single\"\n\n[match]\ntargets = [\"{TARGET}\"]\n\n[request]\nroles = [\"vendor\"]\n\n\
         [approval]\napprover_roles = [\"manager\"]\nrequired = 1\n\n[limits]\nmax_duration = \"2h\"\n\n\
         [channels]\nshell = true\nexec = true\nsftp = true\nforward = []\n"
    );
    let lab = Lab::with_options(Backend::Sqlite, &[("00-jit.toml", &policy)], &[]);
    let v = lab.vendor_without_grant();
    let m = lab.user_with_role("manager");
    let id = common::block_on(async {
        let app = lab.install.app().await;
        app.load_policies().expect("policies");
        let vendor = penstock::users::get(&app, &v.name).await.expect("vendor");
        let manager = penstock::users::get(&app, &m.name).await.expect("manager");
        let ask = penstock::access::requests::Ask {
            target: TARGET.into(),
            duration: 3600,
            reason: "CHG-4711 firmware".into(),
            start: None,
        };
        let r = penstock::access::requests::create(&app, &vendor, &ask).await.expect("request");
        penstock::access::requests::approve(&app, &manager, r.id, Some("ok tonight")).await.expect("approve");
        r.id
    });
    let out = run(&mut lab.ssh(&v, &["-tt"]), b"echo under-request-$((2*21))\nexit\n", T);
    assert!(stdout(&out).contains("under-request-42"), "{}", stdout(&out));
    let s = lab.ended_session(&v.name);
    let bundle = lab.install.scratch().join("request.tar");
    let b = bundle.to_str().expect("path");
    let msg = lab.install.ok(&["evidence", "export", "--request", &id.to_string(), "-o", b]);
    assert!(msg.contains("1 session(s), 1 recording file(s)"), "{msg}");
    let key = evidence_pub(&lab);
    lab.install.ok(&["evidence", "verify", b, "--key", key.to_str().expect("key")]);
    let files = unpack(&bundle);
    let json = |suffix: &str| -> Value {
        serde_json::from_slice(&files.iter().find(|(p, _)| p.ends_with(suffix)).expect(suffix).1).expect("json")
    };
    assert_eq!(json("records/requests.json")[0]["id"], id);
    assert_eq!(json("records/requests.json")[0]["reason"], "CHG-4711 firmware");
    assert_eq!(json("records/approvals.json")[0]["approver"], m.name.as_str());
    let grant = json("records/grants.json")[0].clone();
    assert_eq!(grant["request_id"], id);
    assert_eq!(json("records/sessions.json")[0]["id"], s["id"]);
    assert_eq!(json("records/sessions.json")[0]["grant_id"], grant["id"]);
    let seg = String::from_utf8(files.iter().find(|(p, _)| p.ends_with("audit/segment.jsonl")).expect("seg").1.clone())
        .expect("utf8");
    let kinds: Vec<String> = seg
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("event")["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("request.created"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("session.ended"), "{kinds:?}");
    for k in ["request.approved", "grant.issued", "session.started"] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    // An unknown request is a one-line error.
    let msg = lab.install.fails(&["evidence", "export", "--request", "999", "-o", b]);
    assert!(msg.contains("exists already") || msg.contains("unknown request"), "{msg}");
    let other = lab.install.scratch().join("none.tar");
    let msg = lab.install.fails(&["evidence", "export", "--request", "999", "-o", other.to_str().expect("p")]);
    assert_eq!(msg, "unknown request 999");
    assert!(!other.exists());
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// Playback in a real terminal

/// A private tmux server, killed when dropped.
struct Tmux {
    sock: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.sock).env("TERM", "xterm-256color");
        c
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) {
        let out = run(self.cmd().args(args), b"", T);
        assert_ok(&format!("tmux {args:?}"), &out);
    }

    fn screen(&self) -> String {
        stdout(&run(self.cmd().args(["capture-pane", "-p", "-t", "t"]), b"", T))
    }

    #[track_caller]
    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < end, "{what}: not on screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// `penstock replay` in a real terminal (tmux): space pauses, → and ← seek 5 s, + speeds up, q
/// quits and gives the terminal back.
#[test]
fn replay_in_a_terminal_pauses_seeks_and_quits() {
    let lab = Lab::new(Backend::Sqlite);
    let v = lab.vendor();
    // STEP-1 at ~0 s, STEP-2 at ~3 s, STEP-3 at ~9 s.
    typed_session(
        &lab,
        &v,
        &[(0, "echo STEP-$((0+1))\n"), (3000, "echo STEP-$((1+1))\n"), (6000, "echo STEP-$((2+1))\n"), (300, "exit\n")],
    );
    let id = lab.ended_session(&v.name)["id"].as_str().expect("id").to_string();
    let tmux = Tmux { sock: lab.install.scratch().join("tmux.sock") };
    let cmdline = format!(
        "P={}; C='{}'; $P -c $C replay {id}; echo REPLAY-ENDED-$?; sleep 3; $P -c $C replay {id} --speed 8; echo AGAIN-$?; sleep 60",
        common::BIN,
        lab.install.config_path().display()
    );
    tmux.ok(&["-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "100", "-y", "30", &cmdline]);
    tmux.wait_for("STEP-1", |s| s.contains("STEP-1"));
    tmux.ok(&["send-keys", "-t", "t", "Space"]);
    std::thread::sleep(Duration::from_millis(3500));
    let s = tmux.screen();
    assert!(!s.contains("STEP-2"), "paused, yet playback went on:\n{s}");
    tmux.ok(&["send-keys", "-t", "t", "Right"]);
    let s = tmux.wait_for("seek forward", |s| s.contains("STEP-2"));
    assert!(!s.contains("STEP-3"), "seeking 5 s forward went too far:\n{s}");
    tmux.ok(&["send-keys", "-t", "t", "Left"]);
    let s = tmux.wait_for("seek back", |s| !s.contains("STEP-2"));
    assert!(s.contains("STEP-1"), "{s}");
    tmux.ok(&["send-keys", "-t", "t", "Space"]);
    tmux.ok(&["send-keys", "-t", "t", "+"]);
    tmux.ok(&["send-keys", "-t", "t", "q"]);
    // Quitting gives the terminal back as it was (the alternate screen is left).
    let s = tmux.wait_for("quit", |s| s.contains("REPLAY-ENDED-0"));
    assert!(!s.contains("STEP-1"), "{s}");
    // Played to its end (at 8x), the last screen stays in view.
    let s = tmux.wait_for("the second playback ends", |s| s.contains("AGAIN-0"));
    assert!(s.contains("REPLAY-ENDED-0"), "the final screen is written below what was there:\n{s}");
    assert!(s.contains("STEP-1") && s.contains("STEP-2") && s.contains("STEP-3"), "{s}");
}
