//! End-to-end tests of the management CLI through the real binary, on SQLite and PostgreSQL:
//! `init`, users, targets, grants, the audit chain, secret hygiene and error messages.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::sshd::base32_decode;
use common::{assert_fails, assert_ok, files_under, random_hex, ssh_fingerprint, ssh_keygen, Backend, Install};
use serde_json::Value;

backend_tests! {
    fn init_creates_installation;
    fn init_refuses_existing_installation_and_changes_nothing;
    fn init_works_in_a_folder_with_spaces;
    fn user_lifecycle;
    fn user_add_rejects_bad_input_without_side_effects;
    fn user_keys;
    fn generated_password_is_printed_once_and_works;
    fn target_lifecycle;
    fn target_add_rejects_bad_input;
    fn target_addresses;
    fn grants_lifecycle;
    fn secrets_never_leak;
    fn audit_verify_and_export;
    fn audit_tampering_is_detected;
    fn audit_chain_longer_than_one_page;
    fn concurrent_cli_writers_keep_the_chain_intact;
    fn audit_export_is_independently_verifiable;
    fn config_errors_name_file_line_and_key;
    fn config_bad_value_error_names_the_key;
    fn master_key_errors;
    fn database_errors;
    fn environment_overrides_reach_the_binary;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The `secret=` parameter of an otpauth URI printed in `out`, and the whole URI.
fn otpauth(out: &str) -> (String, String) {
    let uri = out
        .lines()
        .find(|l| l.starts_with("otpauth://totp/"))
        .unwrap_or_else(|| panic!("no otpauth URI in:\n{out}"))
        .trim()
        .to_string();
    let secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap_or_else(|| panic!("no secret in {uri}"))
        .to_string();
    (uri, secret)
}

/// Lines of a terminal QR code (half-block characters) in `out`.
fn qr_lines(out: &str) -> usize {
    out.lines().filter(|l| l.contains('▀') || l.contains('▄') || l.contains('█')).count()
}

/// Path → (bytes, mode, mtime) of every file under `dir`.
fn snapshot(dir: &Path) -> Snapshot {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let md = std::fs::metadata(&p).expect("metadata");
            let bytes = std::fs::read(&p).expect("read");
            (p, (bytes, md.permissions().mode() & 0o7777, md.modified().expect("mtime")))
        })
        .collect()
}

type Snapshot = BTreeMap<PathBuf, (Vec<u8>, u32, std::time::SystemTime)>;

/// Panics, naming the files, unless both snapshots are equal.
#[track_caller]
fn assert_same_files(before: &Snapshot, after: &Snapshot) {
    let mut diffs = Vec::new();
    for (p, old) in before {
        match after.get(p) {
            None => diffs.push(format!("{} removed", p.display())),
            Some(new) if new.0 != old.0 => diffs.push(format!("{} content changed", p.display())),
            Some(new) if new.1 != old.1 => diffs.push(format!("{} mode {:o} -> {:o}", p.display(), old.1, new.1)),
            Some(new) if new.2 != old.2 => diffs.push(format!("{} mtime changed", p.display())),
            Some(_) => {}
        }
    }
    diffs.extend(after.keys().filter(|p| !before.contains_key(*p)).map(|p| format!("{} created", p.display())));
    assert!(diffs.is_empty(), "files changed:\n{}", diffs.join("\n"));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

/// The exported audit chain, parsed.
fn export(i: &Install) -> Vec<Value> {
    i.ok(&["audit", "export", "--format", "jsonl"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Kinds of the exported audit events, in order.
fn audit_kinds(i: &Install) -> Vec<String> {
    export(i).iter().map(|r| r["kind"].as_str().expect("kind").to_string()).collect()
}

/// `N` from `audit chain intact: N events (head H)`, and H.
fn verify_intact(i: &Install) -> (i64, String) {
    let out = i.ok(&["audit", "verify"]);
    let rest = out
        .lines()
        .next()
        .unwrap_or_default()
        .strip_prefix("audit chain intact: ")
        .unwrap_or_else(|| panic!("unexpected audit verify output: {out}"));
    let (n, rest) = rest.split_once(" events (head ").expect("count and head");
    let head = rest.strip_suffix(')').expect("closing parenthesis");
    assert_eq!(head.len(), 64, "{out}");
    (n.parse().expect("count"), head.to_string())
}

/// The hash the audit chain uses (see src/audit/mod.rs): SHA-256 over length-prefixed fields.
fn chain_hash(seq: i64, at: i64, kind: &str, version: i64, actor: &str, details: &str, prev: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [seq.to_string().as_str(), &at.to_string(), kind, &version.to_string(), actor, details, prev] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

fn add_vendor(i: &Install, name: &str) {
    i.ok_stdin(&["user", "add", name, "--role", "vendor", "--password-stdin"], b"correct horse battery\n");
}

fn add_target(i: &Install, name: &str, password: &str) -> String {
    let host_key = ssh_keygen(&i.scratch().join(format!("{name}_host")), "root@plc");
    i.ok_stdin(
        &[
            "target",
            "add",
            name,
            "--address",
            "127.0.0.1:2200",
            "--login",
            "maint",
            "--password-stdin",
            "--host-key",
            &host_key,
        ],
        format!("{password}\n").as_bytes(),
    );
    host_key
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// init

/// `init` lays out config, keys (0600), folders, example policies and an initialised database
/// whose audit chain holds the `initialized` event.
fn init_creates_installation(b: Backend) {
    let i = Install::uninitialised(b);
    let out = i.init();
    let text = assert_ok("init", &out);
    assert!(text.contains(&format!("Created a Penstock installation in {}.", i.dir().display())), "{text}");
    assert!(text.contains(&format!("penstock -c {} user add NAME --role admin", i.config_path().display())), "{text}");
    assert!(out.stderr.is_empty(), "init wrote to stderr: {}", common::stderr(&out));

    let dir = i.dir();
    let key = std::fs::read_to_string(dir.join("master.key")).expect("master.key");
    assert_eq!(key.len(), 65, "64 hex digits and a newline: {key:?}");
    assert!(key.trim_end().bytes().all(|c| c.is_ascii_hexdigit()) && key.ends_with('\n'));
    assert_eq!(mode(&dir.join("master.key")), 0o600);
    assert_eq!(mode(&dir.join("ssh_host_ed25519_key")), 0o600);
    assert_eq!(mode(&dir.join("penstock.toml")) & 0o007, 0, "config must not be world-readable");
    // The host key is a valid OpenSSH private key.
    let pubkey = std::process::Command::new("ssh-keygen")
        .arg("-yf")
        .arg(dir.join("ssh_host_ed25519_key"))
        .output()
        .expect("ssh-keygen");
    assert!(common::stdout(&pubkey).starts_with("ssh-ed25519 "), "{}", common::stderr(&pubkey));
    assert!(dir.join("recordings").is_dir());
    let mut policies: Vec<String> = std::fs::read_dir(dir.join("policies"))
        .expect("policies dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    policies.sort();
    assert_eq!(policies, ["10-safety-critical.toml", "20-line-maintenance.toml", "30-historian.toml"]);
    for p in &policies {
        let text = std::fs::read_to_string(dir.join("policies").join(p)).expect("policy");
        text.parse::<toml::Table>().unwrap_or_else(|e| panic!("{p} is not TOML: {e}"));
    }

    let cfg = penstock::config::Config::load(&i.config_path()).expect("config loads");
    match b {
        Backend::Sqlite => {
            assert!(dir.join("penstock.db").is_file());
            assert_eq!(cfg.database.url, "", "SQLite is the default, not spelled out");
        }
        Backend::Postgres => {
            assert!(!dir.join("penstock.db").exists());
            assert_eq!(cfg.database.url, i.db_url());
            let n = common::postgres::server().psql(i.pg_database().expect("db"), "SELECT COUNT(*) FROM audit_events");
            assert_eq!(n.trim(), "1");
        }
    }
    assert_eq!(verify_intact(&i).0, 1);
    let events = export(&i);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["kind"], "initialized");
    assert_eq!(events[0]["actor"], "cli");
    assert_eq!(events[0]["seq"], 1);
    // The empty installation answers the listing commands.
    assert_eq!(i.json(&["user", "list", "--json"]), serde_json::json!([]));
    assert_eq!(i.json(&["target", "list", "--json"]), serde_json::json!([]));
    assert_eq!(i.json(&["grant", "list", "--json"]), serde_json::json!([]));
    assert_eq!(i.json(&["session", "list", "--json"]), serde_json::json!([]));
}

/// A second `init` in the same folder fails with one line naming the file that exists and
/// changes nothing; each of the guarded files alone is enough to refuse; on PostgreSQL a
/// database that already belongs to an installation is refused and the new folder is cleaned up.
fn init_refuses_existing_installation_and_changes_nothing(b: Backend) {
    let i = Install::new(b);
    add_vendor(&i, "alice");
    let (count, head) = verify_intact(&i);
    let before = snapshot(&i.dir());
    std::thread::sleep(std::time::Duration::from_millis(20));

    let msg = assert_fails("second init", &i.init());
    assert!(msg.contains("penstock.toml exists"), "{msg}");
    assert!(msg.contains(&i.dir().display().to_string()), "{msg}");
    assert!(msg.contains("nothing was changed"), "{msg}");
    assert_same_files(&before, &snapshot(&i.dir()));
    assert_eq!(verify_intact(&i), (count, head.clone()));

    // Any one of the files marks an installation.
    let mut guarded = vec!["master.key", "ssh_host_ed25519_key", "penstock.toml"];
    if b == Backend::Sqlite {
        guarded.push("penstock.db");
    }
    for name in guarded {
        let d = i.scratch().join(format!("partial-{name}"));
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(d.join(name), b"keep me").expect("write");
        let out = common::penstock_command().args(["init", "--dir"]).arg(&d).output().expect("run");
        let msg = assert_fails(&format!("init over {name}"), &out);
        assert!(msg.contains(&format!("({name} exists)")), "{msg}");
        let left: Vec<PathBuf> = files_under(&d);
        assert_eq!(left, vec![d.join(name)], "init over {name} left files behind");
        assert_eq!(std::fs::read(d.join(name)).expect("read"), b"keep me");
    }

    if b == Backend::Postgres {
        // Another folder pointed at the same database.
        let other = i.scratch().join("other");
        let out = common::penstock_command()
            .args(["init", "--dir"])
            .arg(&other)
            .args(["--database-url", &i.db_url()])
            .output()
            .expect("run");
        let msg = assert_fails("init on a used database", &out);
        assert!(msg.contains("already belongs to a Penstock installation"), "{msg}");
        assert!(!other.exists(), "the failed init left {} behind", other.display());
        assert_eq!(verify_intact(&i), (count, head), "the refused init wrote to the database");
        assert_eq!(i.json(&["user", "list", "--json"]).as_array().map(Vec::len), Some(1));
    }
}

/// Paths with spaces and non-ASCII characters work end to end (config, SQLite URL, keys).
fn init_works_in_a_folder_with_spaces(b: Backend) {
    let i = Install::uninitialised_in(b, "penstock test dir é ");
    assert_ok("init", &i.init());
    add_vendor(&i, "alice");
    add_target(&i, "plc", "target-pass-1");
    assert_eq!(verify_intact(&i).0, 3);
    if b == Backend::Sqlite {
        assert!(i.dir().join("penstock.db").is_file());
    }
}

// ---------------------------------------------------------------------------------------------
// users

/// Adding, listing, disabling and re-enrolling users; each change is audited once.
fn user_lifecycle(b: Backend) {
    let i = Install::new(b);
    let out = i.ok_stdin(
        &["user", "add", "alice", "--role", "vendor", "--org", "Acme Automation", "--password-stdin"],
        b"alice-password-1\n",
    );
    assert!(out.contains("User alice added (vendor)."), "{out}");
    assert!(!out.contains("Password (shown once)"), "{out}");
    let (uri, secret) = otpauth(&out);
    assert!(uri.starts_with("otpauth://totp/Penstock:alice?"), "{uri}");
    assert!(uri.contains("issuer=Penstock"), "{uri}");
    assert_eq!(base32_decode(&secret).len(), 20, "a 160-bit seed");
    assert!(qr_lines(&out) > 10, "no QR code in:\n{out}");

    let list = i.json(&["user", "list", "--json"]);
    let users = list.as_array().expect("array");
    assert_eq!(users.len(), 1);
    let alice = &users[0];
    assert_eq!(alice["name"], "alice");
    assert_eq!(alice["role"], "vendor");
    assert_eq!(alice["org"], "Acme Automation");
    assert_eq!(alice["disabled"], false);
    assert_eq!(alice["has_password"], true);
    assert_eq!(alice["expires_at"], Value::Null);
    let keys: Vec<&str> = alice.as_object().expect("object").keys().map(String::as_str).collect();
    assert!(!keys.iter().any(|k| k.contains("hash") || k.contains("totp")), "internal fields exposed: {keys:?}");

    // --no-password, other roles, expiry.
    let out = i.ok(&["user", "add", "carol", "--role", "auditor", "--no-password"]);
    assert!(out.contains("User carol added (auditor)."), "{out}");
    assert!(!out.contains("Password"), "{out}");
    otpauth(&out);
    i.ok(&["user", "add", "erin", "--role", "manager", "--no-password", "--expires", "2000-01-01"]);
    i.ok(&["user", "add", "frank", "--role", "admin", "--no-password", "--expires", "2999-12-31"]);
    let list = i.json(&["user", "list", "--json"]);
    let by_name = |n: &str| list.as_array().expect("array").iter().find(|u| u["name"] == n).cloned().expect(n);
    assert_eq!(by_name("carol")["has_password"], false);
    assert_eq!(by_name("carol")["role"], "auditor");
    // The account works through the whole given day (UTC).
    assert_eq!(by_name("erin")["expires_at"], 946_771_200);
    assert_eq!(by_name("frank")["role"], "admin");
    let names: Vec<&str> = list.as_array().expect("array").iter().map(|u| u["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["alice", "carol", "erin", "frank"], "sorted by name");

    let table = i.ok(&["user", "list"]);
    let line =
        |n: &str| table.lines().find(|l| l.starts_with(&format!("{n} "))).unwrap_or_else(|| panic!("{n}: {table}"));
    assert!(line("alice").contains("Acme Automation") && line("alice").contains("active"), "{table}");
    assert!(line("erin").contains("expired"), "{table}");
    // Shown as the moment it stops working: the end of the given day.
    assert!(line("frank").contains("active") && line("frank").contains("3000-01-01 00:00:00 UTC"), "{table}");

    // Disable.
    assert!(i.ok(&["user", "disable", "alice"]).contains("User alice disabled."));
    assert_eq!(by_name_in(&i, "alice")["disabled"], true);
    assert!(i.ok(&["user", "list"]).lines().any(|l| l.starts_with("alice ") && l.contains("disabled")));
    let msg = i.fails(&["user", "disable", "nobody"]);
    assert!(msg.contains("unknown user \"nobody\""), "{msg}");

    // Reset MFA: a new seed, and the printed URI is the stored one.
    let out = i.ok(&["user", "reset-mfa", "alice"]);
    assert!(out.contains("TOTP of alice replaced"), "{out}");
    assert!(qr_lines(&out) > 10, "{out}");
    let (uri2, secret2) = otpauth(&out);
    assert_ne!(uri2, uri);
    assert_ne!(secret2, secret);
    let stored = common::block_on(async {
        let app = i.app().await;
        let user = penstock::users::get(&app, "alice").await.expect("alice");
        let seed = penstock::users::totp_seed(&app, user.id).await.expect("seed").expect("enrolled");
        app.store.close().await;
        seed
    });
    assert_eq!(stored.expose(), base32_decode(&secret2).as_slice(), "the printed URI holds the stored seed");
    let msg = i.fails(&["user", "reset-mfa", "nobody"]);
    assert!(msg.contains("unknown user"), "{msg}");

    assert_eq!(
        audit_kinds(&i),
        ["initialized", "user.added", "user.added", "user.added", "user.added", "user.disabled", "user.mfa_reset"]
    );
    verify_intact(&i);
}

fn by_name_in(i: &Install, name: &str) -> Value {
    i.json(&["user", "list", "--json"])
        .as_array()
        .expect("array")
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no user {name}"))
}

/// Duplicate users, unknown roles, bad names, short or missing passwords and bad dates fail
/// with one clear line and leave no user and no audit event behind.
fn user_add_rejects_bad_input_without_side_effects(b: Backend) {
    let i = Install::new(b);
    add_vendor(&i, "alice");
    let (count, head) = verify_intact(&i);

    let cases: Vec<(Vec<&str>, &[u8], &str)> = vec![
        (vec!["user", "add", "alice", "--role", "vendor", "--no-password"], b"", "user \"alice\" already exists"),
        (
            vec!["user", "add", "alice", "--role", "manager", "--password-stdin"],
            b"another-password\n",
            "user \"alice\" already exists",
        ),
        (vec!["user", "add", "bob", "--role", "superuser", "--no-password"], b"", "unknown role \"superuser\""),
        (vec!["user", "add", "bad name", "--role", "vendor", "--no-password"], b"", "invalid user name \"bad name\""),
        (vec!["user", "add", "bob@plc", "--role", "vendor", "--no-password"], b"", "invalid user name"),
        (vec!["user", "add", "bob", "--role", "vendor", "--password-stdin"], b"short\n", "password too short"),
        (vec!["user", "add", "bob", "--role", "vendor", "--password-stdin"], b"", "no password on standard input"),
        (
            vec!["user", "add", "bob", "--role", "vendor", "--no-password", "--expires", "2030-13-01"],
            b"",
            "invalid --expires \"2030-13-01\"",
        ),
    ];
    for (args, stdin, expected) in cases {
        let msg = i.fails_stdin(&args, stdin);
        assert!(msg.contains(expected), "{args:?}: expected {expected:?} in: {msg}");
    }
    // clap refuses contradictory flags (usage error, exit 2).
    let out = i.run(&["user", "add", "bob", "--role", "vendor", "--no-password", "--password-stdin"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));

    let names: Vec<String> = i
        .json(&["user", "list", "--json"])
        .as_array()
        .expect("array")
        .iter()
        .map(|u| u["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["alice"]);
    assert_eq!(verify_intact(&i), (count, head), "failed commands must not write audit events");
}

/// SSH keys: added from the command line or a file (fingerprint as ssh-keygen computes it),
/// duplicates and malformed keys refused, removed by fingerprint or by key line.
fn user_keys(b: Backend) {
    let i = Install::new(b);
    add_vendor(&i, "alice");
    let key1 = ssh_keygen(&i.scratch().join("id1"), "alice@laptop");
    let key2 = ssh_keygen(&i.scratch().join("id2"), "alice@tablet");
    let fp1 = ssh_fingerprint(&i.scratch().join("id1.pub"));
    let fp2 = ssh_fingerprint(&i.scratch().join("id2.pub"));

    let out = i.ok(&["user", "add-key", "alice", "--key", &key1]);
    assert_eq!(out.trim(), format!("Key {fp1} added to alice."));
    let key_file = i.scratch().join("id2.pub").display().to_string();
    let out = i.ok(&["user", "add-key", "alice", "--key-file", &key_file]);
    assert_eq!(out.trim(), format!("Key {fp2} added to alice."));

    let msg = i.fails(&["user", "add-key", "alice", "--key", &key1]);
    assert!(msg.contains(&format!("already has key {fp1}")), "{msg}");
    let msg = i.fails(&["user", "add-key", "alice", "--key", "ssh-ed25519 AAAAnotbase64!! x"]);
    assert!(msg.contains("malformed SSH public key"), "{msg}");
    let msg = i.fails(&["user", "add-key", "alice", "--key", "not a key at all"]);
    assert!(msg.contains("malformed SSH public key"), "{msg}");
    let msg = i.fails(&["user", "add-key", "nobody", "--key", &key1]);
    assert!(msg.contains("unknown user \"nobody\""), "{msg}");
    let missing = i.scratch().join("missing.pub").display().to_string();
    let msg = i.fails(&["user", "add-key", "alice", "--key-file", &missing]);
    assert!(msg.contains("cannot read") && msg.contains("missing.pub"), "{msg}");

    let stored = common::block_on(async {
        let app = i.app().await;
        let u = penstock::users::get(&app, "alice").await.expect("alice");
        let k = penstock::users::keys(&app, u.id).await.expect("keys");
        app.store.close().await;
        k
    });
    let fps: Vec<&str> = stored.iter().map(|(fp, _)| fp.as_str()).collect();
    assert_eq!(fps, [fp1.as_str(), fp2.as_str()]);
    // Stored without the comment.
    assert!(key1.starts_with(&stored[0].1) && !stored[0].1.contains("alice@laptop"), "{:?}", stored[0]);

    assert_eq!(i.ok(&["user", "remove-key", "alice", &fp1]).trim(), "Key removed from alice.");
    let msg = i.fails(&["user", "remove-key", "alice", &fp1]);
    assert!(msg.contains(&format!("has no key {fp1}")), "{msg}");
    assert_eq!(i.ok(&["user", "remove-key", "alice", &key2]).trim(), "Key removed from alice.");
    let msg = i.fails(&["user", "remove-key", "alice", "garbage"]);
    assert!(msg.contains("malformed SSH public key"), "{msg}");

    assert_eq!(
        audit_kinds(&i),
        ["initialized", "user.added", "user.key_added", "user.key_added", "user.key_removed", "user.key_removed"]
    );
    let events = export(&i);
    assert_eq!(events[2]["details"]["fingerprint"], fp1.as_str());
    verify_intact(&i);
}

/// Without --password-stdin a password is generated, printed exactly once, and it is the
/// account's real password.
fn generated_password_is_printed_once_and_works(b: Backend) {
    let i = Install::new(b);
    let out = i.ok(&["user", "add", "dave", "--role", "manager"]);
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("Password (shown once): "))
        .unwrap_or_else(|| panic!("no generated password in:\n{out}"))
        .to_string();
    assert_eq!(password.len(), 20, "{password:?}");
    assert!(password.bytes().all(|c| c.is_ascii_alphanumeric()), "{password:?}");
    assert_eq!(out.matches(&password).count(), 1);
    i.ok(&["user", "list"]);
    i.ok(&["user", "list", "--json"]);
    i.ok(&["audit", "export"]);
    let places = i.find_secret(password.as_bytes());
    assert_eq!(places, ["stdout of `penstock user add dave --role manager`"], "password shown more than once");

    common::block_on(async {
        use penstock::auth::{first_factor, AuthError, FirstFactor};
        use penstock::secret::Secret;
        let app = i.app().await;
        let src = "192.0.2.1".parse().expect("ip");
        let ok = first_factor(&app, "dave", FirstFactor::Password(&Secret::from_string(password.clone())), src).await;
        assert_eq!(ok.expect("the printed password works").name, "dave");
        let bad = first_factor(&app, "dave", FirstFactor::Password(&Secret::from_string("x".repeat(20))), src).await;
        assert_eq!(bad, Err(AuthError::Denied));
        app.store.close().await;
    });
}

// ---------------------------------------------------------------------------------------------
// targets

/// Adding, showing, listing, rotating (versions 2, 3, then a private key) and removing a
/// target; the vault returns the latest credential.
fn target_lifecycle(b: Backend) {
    let i = Install::new(b);
    let host_key = ssh_keygen(&i.scratch().join("plc_host"), "root@plc-line3");
    let host_fp = ssh_fingerprint(&i.scratch().join("plc_host.pub"));
    let out = i.ok_stdin(
        &[
            "target",
            "add",
            "plc-line3",
            "--address",
            "127.0.0.1:2200",
            "--login",
            "maint",
            "--password-stdin",
            "--host-key",
            &host_key,
            "--site",
            "plant-a",
            "--zone",
            "line3",
            "--criticality",
            "high",
        ],
        b"plc-password-1\n",
    );
    assert_eq!(out.trim(), format!("Target plc-line3 added (127.0.0.1:2200 as maint, host key {host_fp})."));

    let list = i.json(&["target", "list", "--json"]);
    let t = &list.as_array().expect("array")[0];
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(t["name"], "plc-line3");
    assert_eq!(t["protocol"], "ssh");
    assert_eq!(t["host"], "127.0.0.1");
    assert_eq!(t["port"], 2200);
    assert_eq!(t["login"], "maint");
    assert_eq!(t["credential_kind"], "password");
    assert_eq!(t["site"], "plant-a");
    assert_eq!(t["zone"], "line3");
    assert_eq!(t["criticality"], "high");
    let pinned = t["host_key"].as_str().expect("host key");
    assert!(host_key.starts_with(pinned) && !pinned.contains("root@"), "pinned without comment: {pinned}");

    let table = i.ok(&["target", "list"]);
    assert!(
        table.lines().any(|l| l.starts_with("plc-line3 ") && l.contains("127.0.0.1:2200") && l.contains("plant-a")),
        "{table}"
    );
    let show = i.ok(&["target", "show", "plc-line3"]);
    for expected in [
        "name:          plc-line3".to_string(),
        "address:       127.0.0.1:2200".into(),
        "login:         maint".into(),
        "credential:    password (vaulted)".into(),
        format!("host key:      {host_fp}"),
        "site/zone/crit: plant-a / line3 / high".into(),
    ] {
        assert!(show.contains(&expected), "missing {expected:?} in:\n{show}");
    }
    let msg = i.fails(&["target", "show", "nope"]);
    assert!(msg.contains("unknown target \"nope\""), "{msg}");

    // Rotation.
    let out = i.ok_stdin(&["target", "set-secret", "plc-line3", "--password-stdin"], b"plc-password-2\n");
    assert_eq!(out.trim(), "Credential of plc-line3 rotated to version 2.");
    let out = i.ok_stdin(&["target", "set-secret", "plc-line3", "--password-stdin"], b"plc-password-3\n");
    assert_eq!(out.trim(), "Credential of plc-line3 rotated to version 3.");
    assert_eq!(credential(&i, "plc-line3"), b"plc-password-3");
    // A private key credential.
    let key_path = i.scratch().join("plc_client");
    ssh_keygen(&key_path, "gateway");
    let key_arg = key_path.display().to_string();
    let out = i.ok(&["target", "set-secret", "plc-line3", "--key-file", &key_arg]);
    assert_eq!(out.trim(), "Credential of plc-line3 rotated to version 4.");
    assert!(i.ok(&["target", "show", "plc-line3"]).contains("credential:    private_key (vaulted)"));
    assert_eq!(credential(&i, "plc-line3"), std::fs::read(&key_path).expect("key"));
    // Refused credentials change nothing.
    let bad_key = i.scratch().join("not_a_key");
    std::fs::write(&bad_key, "hello\n").expect("write");
    let msg = i.fails(&["target", "set-secret", "plc-line3", "--key-file", &bad_key.display().to_string()]);
    assert!(msg.contains("malformed private key"), "{msg}");
    let locked = i.scratch().join("locked_key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
        .arg(&locked)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    let msg = i.fails(&["target", "set-secret", "plc-line3", "--key-file", &locked.display().to_string()]);
    assert!(msg.contains("passphrase-protected"), "{msg}");
    let msg = i.fails(&["target", "set-secret", "plc-line3"]);
    assert!(msg.contains("give the new credential"), "{msg}");
    let msg = i.fails_stdin(&["target", "set-secret", "nope", "--password-stdin"], b"whatever-pass\n");
    assert!(msg.contains("unknown target \"nope\""), "{msg}");
    assert_eq!(credential(&i, "plc-line3"), std::fs::read(&key_path).expect("key"));

    // Removal takes the secrets with it; the name can be reused.
    assert_eq!(i.ok(&["target", "remove", "plc-line3"]).trim(), "Target plc-line3 removed.");
    assert_eq!(i.json(&["target", "list", "--json"]), serde_json::json!([]));
    assert_eq!(i.exec_sql("DELETE FROM secrets WHERE owner_kind = 'target'"), 0, "secrets left after remove");
    let msg = i.fails(&["target", "remove", "plc-line3"]);
    assert!(msg.contains("unknown target \"plc-line3\""), "{msg}");
    add_target(&i, "plc-line3", "plc-password-new");
    assert_eq!(credential(&i, "plc-line3"), b"plc-password-new");

    assert_eq!(
        audit_kinds(&i),
        [
            "initialized",
            "target.added",
            "target.secret_rotated",
            "target.secret_rotated",
            "target.secret_rotated",
            "target.removed",
            "target.added"
        ]
    );
    let events = export(&i);
    assert_eq!(events[1]["details"]["host_key_fingerprint"], host_fp.as_str());
    assert_eq!(events[4]["details"]["version"], 4);
    assert_eq!(events[4]["details"]["kind"], "private_key");
    verify_intact(&i);
}

/// The vaulted credential of a target, through the library.
fn credential(i: &Install, name: &str) -> Vec<u8> {
    common::block_on(async {
        let app = i.app().await;
        let t = penstock::targets::get(&app, name).await.expect("target");
        let c = penstock::targets::credential(&app, &t).await.expect("credential").expose().to_vec();
        app.store.close().await;
        c
    })
}

/// Duplicate targets, missing or malformed host keys, missing credentials, bad addresses and
/// protocols fail with one line and write nothing.
fn target_add_rejects_bad_input(b: Backend) {
    let i = Install::new(b);
    let host_key = add_target(&i, "plc-line3", "plc-password-1");
    let (count, head) = verify_intact(&i);
    let base = |name: &'static str| -> Vec<String> {
        ["target", "add", name, "--address", "127.0.0.1:2200", "--login", "maint"].map(String::from).to_vec()
    };
    let with = |mut v: Vec<String>, more: &[&str]| -> Vec<String> {
        v.extend(more.iter().map(|s| s.to_string()));
        v
    };
    let pw: &[u8] = b"plc-password-2\n";
    let cases: Vec<(Vec<String>, &[u8], &str)> = vec![
        (
            with(base("plc-line3"), &["--password-stdin", "--host-key", &host_key]),
            pw,
            "target \"plc-line3\" already exists",
        ),
        (with(base("plc-2"), &["--password-stdin"]), pw, "give --host-key or --fetch-host-key"),
        (
            with(base("plc-2"), &["--password-stdin", "--host-key", "ssh-ed25519 AAAAC3Nza"]),
            pw,
            "--host-key: malformed SSH public key",
        ),
        (with(base("plc-2"), &["--password-stdin", "--host-key", "hello"]), pw, "--host-key: malformed SSH public key"),
        (with(base("plc-2"), &["--host-key", &host_key]), b"", "give the target credential"),
        (
            with(base("plc-2"), &["--password-stdin", "--host-key", &host_key]),
            b"",
            "no target password on standard input",
        ),
        (
            with(base("plc-2"), &["--password-stdin", "--host-key", &host_key, "--protocol", "telnet"]),
            pw,
            "unsupported protocol \"telnet\"",
        ),
        (with(base("plc-2"), &["--password-stdin", "--protocol", "rdp"]), pw, "give --cert-sha256 or --fetch-cert"),
        (with(base("bad name"), &["--password-stdin", "--host-key", &host_key]), pw, "invalid target name"),
        (
            [
                "target",
                "add",
                "plc-2",
                "--address",
                "127.0.0.1:99999",
                "--login",
                "maint",
                "--password-stdin",
                "--host-key",
                host_key.as_str(),
            ]
            .map(String::from)
            .to_vec(),
            pw,
            "invalid address \"127.0.0.1:99999\"",
        ),
        (
            [
                "target",
                "add",
                "plc-2",
                "--address",
                "127.0.0.1:22",
                "--login",
                "",
                "--password-stdin",
                "--host-key",
                host_key.as_str(),
            ]
            .map(String::from)
            .to_vec(),
            pw,
            "--login is required",
        ),
    ];
    for (args, stdin, expected) in cases {
        let msg = i.fails_stdin(&args, stdin);
        assert!(msg.contains(expected), "{args:?}: expected {expected:?} in: {msg}");
    }
    let names: Vec<Value> =
        i.json(&["target", "list", "--json"]).as_array().expect("array").iter().map(|t| t["name"].clone()).collect();
    assert_eq!(names, ["plc-line3"]);
    assert_eq!(credential(&i, "plc-line3"), b"plc-password-1");
    assert_eq!(verify_intact(&i), (count, head));
}

/// Host names, IPv6 literals and default ports are stored and shown as addresses.
fn target_addresses(b: Backend) {
    let i = Install::new(b);
    let key = ssh_keygen(&i.scratch().join("hk"), "x");
    for (name, address, host, port, shown) in [
        ("hmi-v6", "[::1]:2201", "::1", 2201, "[::1]:2201"),
        ("hmi-v6-default", "[fd00::15]", "fd00::15", 22, "[fd00::15]:22"),
        ("plc-dns", "plc3.plant.example", "plc3.plant.example", 22, "plc3.plant.example:22"),
        ("plc-ip", "10.0.3.15:502", "10.0.3.15", 502, "10.0.3.15:502"),
    ] {
        i.ok_stdin(
            &["target", "add", name, "--address", address, "--login", "maint", "--password-stdin", "--host-key", &key],
            b"plc-password-1\n",
        );
        let list = i.json(&["target", "list", "--json"]);
        let t = list.as_array().expect("array").iter().find(|t| t["name"] == name).cloned().expect(name);
        assert_eq!((t["host"].as_str(), t["port"].as_i64()), (Some(host), Some(port)), "{address}");
        let show = i.ok(&["target", "show", name]);
        assert!(show.contains(&format!("address:       {shown}\n")), "{address}: {show}");
    }
}

// ---------------------------------------------------------------------------------------------
// grants

/// Grants: issued for a duration, listed as live, revoked once; bad input refused; removing the
/// target removes its grants.
fn grants_lifecycle(b: Backend) {
    let i = Install::new(b);
    add_vendor(&i, "alice");
    add_target(&i, "plc-line3", "plc-password-1");
    let t0 = now();
    let out = i.ok(&["grant", "add", "--user", "alice", "--target", "plc-line3", "--for", "2h"]);
    assert!(out.starts_with("Grant 1 issued: alice may reach plc-line3 until "), "{out}");
    let list = i.json(&["grant", "list", "--json"]);
    let g = &list.as_array().expect("array")[0];
    assert_eq!(g["id"], 1);
    let (from, until) = (g["valid_from"].as_i64().expect("from"), g["valid_until"].as_i64().expect("until"));
    assert!((t0 - 5..=now() + 5).contains(&from), "{g}");
    assert_eq!(until - from, 7200);
    assert_eq!(g["revoked_at"], Value::Null);
    assert!(i.ok(&["grant", "list"]).lines().any(|l| l.starts_with("1 ") && l.contains("alice") && l.contains("live")));

    for (args, expected) in [
        (vec!["grant", "add", "--user", "nobody", "--target", "plc-line3", "--for", "1h"], "unknown user"),
        (vec!["grant", "add", "--user", "alice", "--target", "nope", "--for", "1h"], "unknown target"),
        (vec!["grant", "add", "--user", "alice", "--target", "plc-line3", "--for", "soon"], "invalid duration"),
        (vec!["grant", "revoke", "99"], "99"),
    ] {
        let msg = i.fails(&args);
        assert!(msg.contains(expected), "{args:?}: expected {expected:?} in: {msg}");
    }
    assert!(i.ok(&["grant", "revoke", "1"]).starts_with("Grant 1 revoked"));
    let msg = i.fails(&["grant", "revoke", "1"]);
    assert!(msg.contains("grant 1 has already ended"), "{msg}");
    assert!(i.ok(&["grant", "list"]).lines().any(|l| l.starts_with("1 ") && l.contains("revoked")));

    i.ok(&["grant", "add", "--user", "alice", "--target", "plc-line3", "--for", "1h30m"]);
    i.ok(&["target", "remove", "plc-line3"]);
    assert_eq!(i.json(&["grant", "list", "--json"]), serde_json::json!([]), "grants outlive their target");
    assert_eq!(
        audit_kinds(&i),
        [
            "initialized",
            "user.added",
            "target.added",
            "grant.issued",
            "grant.revoked",
            "grant.issued",
            "target.removed"
        ]
    );
    verify_intact(&i);
}

// ---------------------------------------------------------------------------------------------
// secret hygiene

/// Passwords, target credentials (password, keyboard-interactive answers, private key), TOTP
/// seeds and the master key never appear in the database (files, WAL, dump, server data files)
/// nor in anything penstock prints — except the enrolment URI, printed once to the new user.
fn secrets_never_leak(b: Backend) {
    let i = Install::new(b);
    let user_pw = format!("UsrPw-{}", random_hex(12));
    let target_pw = format!("TgtPw-{}", random_hex(12));
    let rotated_pw = format!("TgtPw2-{}", random_hex(12));
    let kbd_answer = format!("KbdAns-{}", random_hex(12));

    let out = i
        .ok_stdin(&["user", "add", "alice", "--role", "vendor", "--password-stdin"], format!("{user_pw}\n").as_bytes());
    let (_, seed_b32) = otpauth(&out);
    let seed = base32_decode(&seed_b32);
    let out = i.ok(&["user", "reset-mfa", "alice"]);
    let (_, seed2_b32) = otpauth(&out);
    let seed2 = base32_decode(&seed2_b32);
    // Failed commands that were handed secrets.
    i.fails_stdin(&["user", "add", "alice", "--role", "vendor", "--password-stdin"], format!("{user_pw}\n").as_bytes());
    let host_key = add_target(&i, "plc-line3", &target_pw);
    i.fails_stdin(
        &[
            "target",
            "add",
            "plc-line3",
            "--address",
            "127.0.0.1:22",
            "--login",
            "m",
            "--password-stdin",
            "--host-key",
            &host_key,
        ],
        format!("{target_pw}\n").as_bytes(),
    );
    i.fails_stdin(
        &[
            "target",
            "add",
            "plc-9",
            "--address",
            "127.0.0.1:22",
            "--login",
            "m",
            "--password-stdin",
            "--host-key",
            "bad",
        ],
        format!("{target_pw}\n").as_bytes(),
    );
    i.ok_stdin(&["target", "set-secret", "plc-line3", "--password-stdin"], format!("{rotated_pw}\n").as_bytes());
    i.ok_stdin(&["target", "set-secret", "plc-line3", "--kbdint-stdin"], format!("{kbd_answer}\n123456\n").as_bytes());
    let key_path = i.scratch().join("client_key");
    ssh_keygen(&key_path, "gw");
    let key_text = std::fs::read_to_string(&key_path).expect("key");
    i.ok(&["target", "set-secret", "plc-line3", "--key-file", &key_path.display().to_string()]);
    add_target(&i, "plc-other", &target_pw);
    for args in [
        vec!["user", "list"],
        vec!["user", "list", "--json"],
        vec!["target", "list"],
        vec!["target", "list", "--json"],
        vec!["target", "show", "plc-line3"],
        vec!["audit", "export"],
        vec!["audit", "verify"],
    ] {
        i.ok(&args);
    }

    let mut leaks = Vec::new();
    for (what, secret) in [
        ("user password", user_pw.as_bytes().to_vec()),
        ("target password", target_pw.as_bytes().to_vec()),
        ("rotated target password", rotated_pw.as_bytes().to_vec()),
        ("keyboard-interactive answer", kbd_answer.as_bytes().to_vec()),
        ("first TOTP seed", seed.clone()),
        ("current TOTP seed", seed2.clone()),
    ] {
        for place in i.find_secret(&secret) {
            leaks.push(format!("{what} in {place}"));
        }
    }
    // The private key's body: its base64 lines, except the first, which is the same for every
    // unencrypted Ed25519 key (format magic and cipher "none").
    for line in key_text.lines().filter(|l| !l.starts_with("-----") && l.len() > 40).skip(1) {
        for place in i.find_secret(line.as_bytes()) {
            leaks.push(format!("private key line in {place}"));
        }
    }
    // The enrolment URIs are printed (once each), and nowhere else.
    for (seed_b32, command) in
        [(&seed_b32, "user add alice --role vendor --password-stdin"), (&seed2_b32, "user reset-mfa alice")]
    {
        let places = i.find_secret(seed_b32.as_bytes());
        if places != [format!("stdout of `penstock {command}`")] {
            leaks.push(format!("TOTP seed (base32) in {places:?}"));
        }
    }
    // The master key is in master.key and nowhere else.
    let master_hex = std::fs::read_to_string(i.dir().join("master.key")).expect("key").trim().to_string();
    let master = hex::decode(&master_hex).expect("hex");
    for place in i.find_secret(&master) {
        if place != format!("file {}", i.dir().join("master.key").display()) {
            leaks.push(format!("master key in {place}"));
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    // Sanity check of the scanner itself: the login name is stored and found.
    assert!(!i.find_secret(b"plc-other").is_empty());
}

// ---------------------------------------------------------------------------------------------
// audit

fn busy_install(b: Backend) -> Install {
    let i = Install::new(b);
    i.ok(&["user", "add", "alice", "--role", "vendor", "--org", "Acme Automation", "--no-password"]);
    i.ok(&["user", "add", "bobby", "--role", "manager", "--no-password"]);
    add_target(&i, "plc-line3", "plc-password-1");
    i.ok(&["user", "disable", "alice"]);
    i.ok(&["grant", "add", "--user", "bobby", "--target", "plc-line3", "--for", "1h"]);
    i
}

/// `audit verify` reports the count and the head; `audit export` writes one JSON object per
/// line, numbered from 1 and linked by prev_hash, the same on stdout and with -o.
fn audit_verify_and_export(b: Backend) {
    let t0 = now();
    let i = busy_install(b);
    let (count, head) = verify_intact(&i);
    assert_eq!(count, 6);
    let text = i.ok(&["audit", "export", "--format", "jsonl"]);
    assert!(text.ends_with('\n'));
    let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(events.len() as i64, count);
    let mut prev = "0".repeat(64);
    for (n, e) in events.iter().enumerate() {
        let obj = e.as_object().expect("object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["actor", "at", "details", "hash", "kind", "prev_hash", "seq", "version"], "{e}");
        assert_eq!(e["seq"], n as i64 + 1);
        assert_eq!(e["prev_hash"], prev.as_str(), "event {} does not link", n + 1);
        let hash = e["hash"].as_str().expect("hash");
        assert!(hash.len() == 64 && hash.bytes().all(|c| c.is_ascii_hexdigit()), "{hash}");
        assert!((t0 - 5..=now() + 5).contains(&e["at"].as_i64().expect("at")), "{e}");
        assert_eq!(e["version"], 1);
        assert!(e["details"].is_object(), "{e}");
        prev = hash.to_string();
    }
    assert_eq!(prev, head, "verify's head is the last exported hash");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().expect("kind")).collect();
    assert_eq!(kinds, ["initialized", "user.added", "user.added", "target.added", "user.disabled", "grant.issued"]);
    assert_eq!(events[1]["details"]["user"], "alice");
    assert_eq!(events[1]["details"]["org"], "Acme Automation");
    assert_eq!(events[1]["details"]["event"], "user_added");
    assert_eq!(events[1]["actor"], "cli");

    let file = i.scratch().join("audit.jsonl");
    let out = i.ok(&["audit", "export", "-o", &file.display().to_string()]);
    assert_eq!(out, "");
    assert_eq!(std::fs::read_to_string(&file).expect("export file"), text);
    let out = i.run(&["audit", "export", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(2), "unknown formats are a usage error");
}

/// Editing, re-hashing or deleting a row breaks `audit verify`, which names the first bad event;
/// undoing the edit makes the chain intact again.
fn audit_tampering_is_detected(b: Backend) {
    let i = busy_install(b);
    let (count, head) = verify_intact(&i);

    // A row slipped in outside the sequence.
    assert_eq!(
        i.exec_sql(
            "INSERT INTO audit_events (seq, at, kind, version, actor, details, prev_hash, hash) \
             VALUES (0, 0, 'x', 1, 'x', '{}', 'x', 'x')"
        ),
        1
    );
    let msg = i.fails(&["audit", "verify"]);
    assert_eq!(msg, "audit chain broken at event 0: events outside the sequence were inserted");
    assert_eq!(i.exec_sql("DELETE FROM audit_events WHERE seq = 0"), 1);
    assert_eq!(verify_intact(&i), (count, head.clone()));

    // Edit the details of event 3 (bobby added).
    assert_eq!(i.exec_sql("UPDATE audit_events SET details = replace(details, 'bobby', 'mallo') WHERE seq = 3"), 1);
    let msg = i.fails(&["audit", "verify"]);
    assert_eq!(msg, "audit chain broken at event 3: content does not match its hash (edited)");
    assert_eq!(i.exec_sql("UPDATE audit_events SET details = replace(details, 'mallo', 'bobby') WHERE seq = 3"), 1);
    assert_eq!(verify_intact(&i), (count, head.clone()));

    // Edit the time, actor or kind of another one.
    for (column, edit, undo) in [
        ("at", "at = at + 1", "at = at - 1"),
        ("actor", "actor = 'root'", "actor = 'cli'"),
        ("kind", "kind = 'user.enabled'", "kind = 'user.disabled'"),
    ] {
        assert_eq!(i.exec_sql(&format!("UPDATE audit_events SET {edit} WHERE seq = 5")), 1);
        let msg = i.fails(&["audit", "verify"]);
        assert!(msg.starts_with("audit chain broken at event 5:"), "{column}: {msg}");
        i.exec_sql(&format!("UPDATE audit_events SET {undo} WHERE seq = 5"));
        assert_eq!(verify_intact(&i), (count, head.clone()), "{column}");
    }

    // An attacker who knows the hash function re-hashes the edited row: the next one no longer
    // links to it.
    let rows = export(&i);
    let e = &rows[2];
    let details =
        serde_json::json!({"event": "user_added", "user": "mallo", "role": "admin", "org": null, "expires_at": null})
            .to_string();
    let forged = chain_hash(
        3,
        e["at"].as_i64().expect("at"),
        "user.added",
        1,
        "cli",
        &details,
        e["prev_hash"].as_str().expect("prev"),
    );
    assert_eq!(
        i.exec_sql(&format!("UPDATE audit_events SET details = '{details}', hash = '{forged}' WHERE seq = 3")),
        1
    );
    let msg = i.fails(&["audit", "verify"]);
    assert_eq!(msg, "audit chain broken at event 4: does not link to the event before it");

    // Deleting a row in the middle.
    let j = busy_install(b);
    assert_eq!(j.exec_sql("DELETE FROM audit_events WHERE seq = 4"), 1);
    let msg = j.fails(&["audit", "verify"]);
    assert_eq!(msg, "audit chain broken at event 4: event 4 is missing (next is 5)");
    // Deleting the first row.
    let k = busy_install(b);
    assert_eq!(k.exec_sql("DELETE FROM audit_events WHERE seq = 1"), 1);
    let msg = k.fails(&["audit", "verify"]);
    assert!(msg.starts_with("audit chain broken at event 1: event 1 is missing"), "{msg}");
}

/// Verification and export page through the chain (1000 rows at a time) without losing or
/// repeating events, and name bad events on later pages and at the page boundary.
fn audit_chain_longer_than_one_page(b: Backend) {
    use penstock::audit::{append, Event};
    let i = Install::new(b);
    common::block_on(async {
        let app = i.app().await;
        let mut tx = app.store.begin_write().await.expect("begin");
        for n in 0..1200 {
            append(&mut tx, &*app.clock, "test", &Event::UserDisabled { user: format!("user{n:04}") })
                .await
                .expect("append");
        }
        tx.commit().await.expect("commit");
        app.store.close().await;
    });
    let (count, head) = verify_intact(&i);
    assert_eq!(count, 1201);
    let events = export(&i);
    assert_eq!(events.len(), 1201);
    for (n, pair) in events.windows(2).enumerate() {
        assert_eq!(pair[1]["seq"], n as i64 + 2);
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    assert_eq!(events[1200]["hash"], head.as_str());
    assert_eq!(events[1200]["details"]["user"], "user1199");

    i.exec_sql("UPDATE audit_events SET details = replace(details, 'user1148', 'userXXXX') WHERE seq = 1150");
    assert_eq!(
        i.fails(&["audit", "verify"]),
        "audit chain broken at event 1150: content does not match its hash (edited)"
    );
    i.exec_sql("UPDATE audit_events SET details = replace(details, 'userXXXX', 'user1148') WHERE seq = 1150");
    assert_eq!(verify_intact(&i), (count, head));
    for seq in [1000, 1001] {
        let j = Install::new(b);
        common::block_on(async {
            let app = j.app().await;
            let mut tx = app.store.begin_write().await.expect("begin");
            for n in 0..1010 {
                append(&mut tx, &*app.clock, "test", &Event::UserDisabled { user: format!("u{n}") })
                    .await
                    .expect("append");
            }
            tx.commit().await.expect("commit");
            app.store.close().await;
        });
        assert_eq!(j.exec_sql(&format!("DELETE FROM audit_events WHERE seq = {seq}")), 1);
        let msg = j.fails(&["audit", "verify"]);
        assert_eq!(msg, format!("audit chain broken at event {seq}: event {seq} is missing (next is {})", seq + 1));
    }
}

/// Several CLI processes writing at once queue for the write lock: all succeed, the chain is
/// intact and gap-free; racing to add the same user, exactly one wins and the others get the
/// ordinary one-line conflict error.
fn concurrent_cli_writers_keep_the_chain_intact(b: Backend) {
    use std::process::Stdio;
    let i = Install::new(b);
    let spawn = |args: Vec<String>| {
        i.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn penstock")
    };
    let children: Vec<_> = (0..8)
        .map(|n| {
            spawn(["user", "add", &format!("user{n}"), "--role", "vendor", "--no-password"].map(String::from).to_vec())
        })
        .collect();
    for c in children {
        assert_ok("concurrent user add", &c.wait_with_output().expect("wait"));
    }
    let children: Vec<_> = (0..4)
        .map(|_| spawn(["user", "add", "dup", "--role", "vendor", "--no-password"].map(String::from).to_vec()))
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
    assert_eq!(outputs.iter().filter(|o| o.status.success()).count(), 1, "exactly one `dup` is created");
    for o in outputs.iter().filter(|o| !o.status.success()) {
        let msg = assert_fails("losing user add", o);
        assert_eq!(msg, "user \"dup\" already exists");
    }
    assert_eq!(verify_intact(&i).0, 10);
    assert_eq!(i.json(&["user", "list", "--json"]).as_array().map(Vec::len), Some(9));
}

/// The exported chain can be checked by someone else: each record's hash is the documented
/// SHA-256 over its fields, and links to the one before.
fn audit_export_is_independently_verifiable(b: Backend) {
    let i = busy_install(b);
    let mut prev = "0".repeat(64);
    for e in export(&i) {
        let details = e["details"].to_string();
        let expected = chain_hash(
            e["seq"].as_i64().expect("seq"),
            e["at"].as_i64().expect("at"),
            e["kind"].as_str().expect("kind"),
            e["version"].as_i64().expect("version"),
            e["actor"].as_str().expect("actor"),
            &details,
            &prev,
        );
        assert_eq!(e["hash"], expected.as_str(), "exported event {} cannot be re-hashed: {e}", e["seq"]);
        prev = expected;
    }
}

// ---------------------------------------------------------------------------------------------
// error messages

/// A copy of the installation's config with `edit` applied, in the installation folder (so its
/// relative paths still resolve); returns its path.
fn edited_config(i: &Install, name: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let text = std::fs::read_to_string(i.config_path()).expect("config");
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit changed nothing");
    let p = i.dir().join(name);
    std::fs::write(&p, edited).expect("write config");
    p
}

/// 1-based line number of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?}")) + 1
}

fn run_with_config(config: &Path, args: &[&str]) -> std::process::Output {
    common::penstock_command().arg("-c").arg(config).args(args).output().expect("run penstock")
}

/// A misspelt key, a syntax error and a missing file are reported with the file, the line and
/// the key, on one line.
fn config_errors_name_file_line_and_key(b: Backend) {
    let i = Install::new(b);
    let typo = edited_config(&i, "typo.toml", |t| t.replace("[ssh]\n", "[ssh]\nlisen = \"127.0.0.1:2022\"\n"));
    let line = line_of(&std::fs::read_to_string(&typo).expect("read"), "lisen");
    let msg = assert_fails("typo", &run_with_config(&typo, &["user", "list"]));
    assert!(msg.starts_with(&format!("{}:{line}: [ssh] key `lisen`: unknown field `lisen`", typo.display())), "{msg}");

    let typo = edited_config(&i, "section.toml", |t| format!("{t}\n[sssh]\nlisten = \"127.0.0.1:1\"\n"));
    let line = line_of(&std::fs::read_to_string(&typo).expect("read"), "[sssh]");
    let msg = assert_fails("unknown section", &run_with_config(&typo, &["user", "list"]));
    assert!(msg.contains(&format!("{}:{line}:", typo.display())) && msg.contains("sssh"), "{msg}");

    let broken = edited_config(&i, "broken.toml", |t| t.replace("level = \"info\"", "level = \"info"));
    let line = line_of(&std::fs::read_to_string(&broken).expect("read"), "level = ");
    let msg = assert_fails("syntax error", &run_with_config(&broken, &["user", "list"]));
    assert!(msg.starts_with(&format!("{}:{line}:", broken.display())), "{msg}");

    let bad_value = edited_config(&i, "value.toml", |t| t.replace("format = \"text\"", "format = \"xml\""));
    let line = line_of(&std::fs::read_to_string(&bad_value).expect("read"), "format = ");
    let msg = assert_fails("bad value", &run_with_config(&bad_value, &["user", "list"]));
    assert!(msg.starts_with(&format!("{}:{line}: [log]", bad_value.display())), "{msg}");

    let missing = i.dir().join("nope.toml");
    let msg = assert_fails("missing config", &run_with_config(&missing, &["user", "list"]));
    assert!(msg.contains(&format!("cannot read config {}", missing.display())), "{msg}");
}

/// For a value of the wrong type, the message names the key (not the value).
fn config_bad_value_error_names_the_key(b: Backend) {
    let i = Install::new(b);
    let cfg = edited_config(&i, "value.toml", |t| t.replace("max_failures = 5", "max_failures = \"five\""));
    let line = line_of(&std::fs::read_to_string(&cfg).expect("read"), "max_failures");
    let msg = assert_fails("bad value", &run_with_config(&cfg, &["user", "list"]));
    assert!(msg.starts_with(&format!("{}:{line}: [auth] key `max_failures`:", cfg.display())), "{msg}");
}

/// A wrong, malformed or missing master key is refused before anything is read or written, and
/// the installation works again once the right key is back.
fn master_key_errors(b: Backend) {
    let i = Install::new(b);
    add_vendor(&i, "alice");
    let key_path = i.dir().join("master.key");
    let good = std::fs::read(&key_path).expect("key");
    let (count, head) = verify_intact(&i);

    std::fs::write(&key_path, format!("{}\n", random_hex(32))).expect("write");
    for args in
        [vec!["user", "list"], vec!["audit", "verify"], vec!["user", "add", "bob", "--role", "vendor", "--no-password"]]
    {
        let msg = i.fails(&args);
        assert_eq!(msg, format!("master key {} does not match this database (wrong key file?)", key_path.display()));
    }
    std::fs::write(&key_path, "not a key\n").expect("write");
    let msg = i.fails(&["user", "list"]);
    assert_eq!(
        msg,
        format!("master key {} is malformed: expected 64 hex digits or 32 bytes, found 10 bytes", key_path.display())
    );
    std::fs::remove_file(&key_path).expect("rm");
    let msg = i.fails(&["user", "list"]);
    assert!(msg.starts_with(&format!("cannot read master key {}", key_path.display())), "{msg}");

    std::fs::write(&key_path, &good).expect("restore");
    assert_eq!(verify_intact(&i), (count, head), "refused commands changed the database");
    assert_eq!(i.json(&["user", "list", "--json"]).as_array().map(Vec::len), Some(1));
}

/// Missing or unreachable databases, foreign databases and bad URLs give one-line errors that
/// say what to do and never show a database password.
fn database_errors(b: Backend) {
    let i = Install::new(b);
    match b {
        Backend::Sqlite => {
            // The write-ahead log moves with the file: rows not yet checkpointed live only there.
            let db = i.dir().join("penstock.db");
            let files = ["", "-wal", "-shm"]
                .map(|s| (i.dir().join(format!("penstock.db{s}")), i.scratch().join(format!("moved.db{s}"))));
            for (at, away) in &files {
                if at.exists() {
                    std::fs::rename(at, away).expect("move db");
                }
            }
            let msg = i.fails(&["user", "list"]);
            assert_eq!(msg, format!("database {} does not exist (run `penstock init` first)", db.display()));
            assert!(!db.exists(), "a missing database must not be created on the fly");
            for (at, away) in &files {
                if away.exists() {
                    std::fs::rename(away, at).expect("restore db");
                }
            }
            verify_intact(&i);
        }
        Backend::Postgres => {
            // Nothing listens on the port; the password in the URL is never shown.
            let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
            let url = format!("postgres://penstock:Sup3rSecretDbPw@127.0.0.1:{port}/penstock");
            let cfg = edited_config(&i, "dead.toml", |t| t.replace(&i.db_url(), &url));
            let started = std::time::Instant::now();
            let out = run_with_config(&cfg, &["user", "list"]);
            let msg = assert_fails("dead postgres", &out);
            assert!(msg.starts_with("cannot open database postgres://penstock:***@127.0.0.1:"), "{msg}");
            assert!(
                !common::stderr(&out).contains("Sup3rSecretDbPw") && !common::stdout(&out).contains("Sup3rSecretDbPw")
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "gave up only after {:?}",
                started.elapsed()
            );
            // A database that does not exist on a live server.
            let url = i.db_url().rsplit_once('/').map(|(base, _)| format!("{base}/no_such_db")).expect("url");
            let cfg = edited_config(&i, "nodb.toml", |t| t.replace(&i.db_url(), &url));
            let msg = assert_fails("missing database", &run_with_config(&cfg, &["user", "list"]));
            assert!(msg.starts_with("cannot open database") && msg.contains("no_such_db"), "{msg}");
        }
    }
    // A database penstock did not initialise.
    let foreign = match b {
        Backend::Sqlite => {
            let p = i.scratch().join("foreign.db");
            std::fs::write(&p, b"").expect("empty file");
            format!("sqlite://{}", p.display())
        }
        Backend::Postgres => common::postgres::fresh_database().0,
    };
    let cfg = edited_config(&i, "foreign.toml", |t| {
        t.replace("url = \"\"", &format!("url = \"{foreign}\"")).replace(&i.db_url(), &foreign)
    });
    let msg = assert_fails("foreign database", &run_with_config(&cfg, &["user", "list"]));
    assert_eq!(msg, "database has no vault check value: it was not created by `penstock init`");

    let cfg = edited_config(&i, "mysql.toml", |t| {
        t.replace("url = \"\"", "url = \"mysql://root:pw@localhost/x\"")
            .replace(&i.db_url(), "mysql://root:pw@localhost/x")
    });
    let msg = assert_fails("mysql", &run_with_config(&cfg, &["user", "list"]));
    assert!(msg.starts_with("database url must start with sqlite:// or postgres://"), "{msg}");
    assert!(!msg.contains(":pw@"), "{msg}");
}

/// `PENSTOCK_<SECTION>_<KEY>` variables and systemd's `$CREDENTIALS_DIRECTORY` reach the binary;
/// a misspelt variable is an error.
fn environment_overrides_reach_the_binary(b: Backend) {
    let i = Install::new(b);
    let elsewhere = i.scratch().join("elsewhere.key");
    let out = i.command(&["user", "list"]).env("PENSTOCK_VAULT_MASTER_KEY", &elsewhere).output().expect("run");
    let msg = assert_fails("master key override", &out);
    assert!(msg.starts_with(&format!("cannot read master key {}", elsewhere.display())), "{msg}");

    let out = i.command(&["user", "list"]).env("PENSTOCK_SSH_LISTN", "127.0.0.1:1").output().expect("run");
    let msg = assert_fails("misspelt override", &out);
    assert!(msg.contains("environment override") && msg.contains("listn"), "{msg}");

    // systemd credentials win over the configured path.
    let creds = i.scratch().join("credentials");
    std::fs::create_dir(&creds).expect("mkdir");
    std::fs::rename(i.dir().join("master.key"), creds.join("master.key")).expect("move key");
    let out = i.command(&["audit", "verify"]).env("CREDENTIALS_DIRECTORY", &creds).output().expect("run");
    assert!(assert_ok("credentials directory", &out).starts_with("audit chain intact"));
    assert!(i.fails(&["audit", "verify"]).starts_with("cannot read master key"));
}
