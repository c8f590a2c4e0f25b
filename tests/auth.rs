//! Login rules through the library, on an installation made by the real `penstock init`, on
//! SQLite and PostgreSQL: password + TOTP, replay and skew rules, lockout per user and per source
//! address with its window, and the single answer for every kind of refusal.
//!
//! Time is a [`ManualClock`], so windows and TOTP steps are crossed without sleeping.

#[macro_use]
mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::{Backend, Install};
use penstock::app::App;
use penstock::auth::totp::{code_at, STEP};
use penstock::auth::{first_factor, login_password, second_factor, AuthError, FirstFactor, Principal};
use penstock::clock::ManualClock;
use penstock::secret::Secret;
use penstock::users::{self, NewUser, Role};

backend_tests_async! {
    fn password_and_totp_login_works;
    fn wrong_password_or_code_is_denied;
    fn a_code_is_accepted_once;
    fn concurrent_replay_has_one_winner;
    fn another_users_code_is_refused;
    fn one_step_of_skew_is_accepted_two_are_not;
    fn lockout_per_user_and_release_after_window;
    fn wrong_codes_count_towards_lockout;
    fn lockout_per_source_address_across_user_names;
    fn success_clears_the_users_failures;
    fn unknown_user_gets_the_same_answer;
    fn disabled_and_expired_users_are_refused;
    fn account_without_password_refuses_passwords;
    fn public_key_first_factor;
    fn failures_and_successes_are_audited;
}

/// 2030-03-17T…, in the middle of a TOTP step.
const T0: i64 = 1_900_000_020 + 10;
const PASSWORD: &str = "correct horse battery";

struct Env {
    /// Keeps the temporary folder (and database) alive.
    _install: Install,
    app: App,
    clock: Arc<ManualClock>,
}

impl Env {
    async fn new(b: Backend) -> Env {
        let install = Install::new(b);
        let app = install.app().await;
        let clock = Arc::new(ManualClock::new(T0));
        let app = App { clock: clock.clone(), ..app };
        Env { _install: install, app, clock }
    }

    fn now(&self) -> i64 {
        use penstock::clock::Clock;
        self.clock.now()
    }

    /// Adds a vendor with [`PASSWORD`]; returns the TOTP seed.
    async fn user(&self, name: &str) -> Secret {
        self.user_with(name, Some(PASSWORD), None).await
    }

    async fn user_with(&self, name: &str, password: Option<&str>, expires_at: Option<i64>) -> Secret {
        let enrol = users::add(
            &self.app,
            "test",
            NewUser {
                name: name.into(),
                role: Role::Vendor,
                org: Some("Acme Automation".into()),
                expires_at,
                password: password.map(|p| Secret::from_string(p.into())),
            },
        )
        .await
        .expect("add user");
        users::totp_seed(&self.app, enrol.user_id).await.expect("seed").expect("enrolled")
    }

    async fn login(&self, name: &str, password: &str, code: &str, from: &str) -> Result<Principal, AuthError> {
        login_password(&self.app, name, &Secret::from_string(password.into()), code, ip(from)).await
    }

    /// Logs `name` in with the right password and the current code.
    async fn login_now(&self, name: &str, seed: &Secret, from: &str) -> Result<Principal, AuthError> {
        self.login(name, PASSWORD, &code_at(seed, self.now()), from).await
    }

    async fn audit_kinds(&self) -> Vec<String> {
        penstock::audit::read(&self.app.store, 0, 10_000).await.expect("audit").into_iter().map(|r| r.kind).collect()
    }

    async fn audit_details(&self, kind: &str) -> Vec<serde_json::Value> {
        penstock::audit::read(&self.app.store, 0, 10_000)
            .await
            .expect("audit")
            .into_iter()
            .filter(|r| r.kind == kind)
            .map(|r| serde_json::from_str(r.details.get()).expect("details json"))
            .collect()
    }

    async fn assert_chain_intact(&self) {
        match penstock::audit::verify(&self.app.store).await.expect("verify") {
            penstock::audit::Verdict::Intact { .. } => {}
            broken => panic!("audit chain broken: {broken:?}"),
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip address")
}

/// A six-digit code that no step within ±2 of `now` produces for `seed`.
fn wrong_code(seed: &Secret, now: i64) -> String {
    let valid: Vec<String> = (-2..=2).map(|k| code_at(seed, now + k * STEP)).collect();
    (0..1_000_000).map(|n| format!("{n:06}")).find(|c| !valid.contains(c)).expect("a wrong code")
}

async fn password_and_totp_login_works(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    let who = env.login_now("alice", &seed, "192.0.2.10").await.expect("login");
    assert_eq!(who.name, "alice");
    assert_eq!(who.role, Role::Vendor);
    // The two steps separately, as the SSH front end calls them.
    env.clock.advance(STEP);
    let who2 =
        first_factor(&env.app, "alice", FirstFactor::Password(&Secret::from_string(PASSWORD.into())), ip("192.0.2.10"))
            .await
            .expect("first factor");
    assert_eq!(who2, who);
    second_factor(&env.app, &who2, &code_at(&seed, env.now()), ip("192.0.2.10"), "password")
        .await
        .expect("second factor");
}

async fn wrong_password_or_code_is_denied(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    let code = code_at(&seed, env.now());
    assert_eq!(env.login("alice", "wrong horse battery", &code, "192.0.2.1").await, Err(AuthError::Denied));
    assert_eq!(env.login("alice", "", &code, "192.0.2.2").await, Err(AuthError::Denied));
    assert_eq!(env.login("alice", PASSWORD, &wrong_code(&seed, env.now()), "192.0.2.3").await, Err(AuthError::Denied));
    // Malformed codes (another user, so that alice's failures stay below the lockout).
    env.user("bob").await;
    for malformed in ["", "12345", "1234567", "abcdef", " 12 34"] {
        assert_eq!(env.login("bob", PASSWORD, malformed, "192.0.2.4").await, Err(AuthError::Denied), "{malformed:?}");
    }
}

async fn a_code_is_accepted_once(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    let code = code_at(&seed, env.now());
    env.login("alice", PASSWORD, &code, "192.0.2.1").await.expect("first use");
    assert_eq!(env.login("alice", PASSWORD, &code, "192.0.2.1").await, Err(AuthError::Denied), "replayed code");
    // Later in the same step, still refused.
    env.clock.advance(10);
    assert_eq!(env.login("alice", PASSWORD, &code, "192.0.2.2").await, Err(AuthError::Denied), "replayed code");
    // The next step's code works; afterwards the previous step's code (still within the skew
    // window) does not, since steps only move forward.
    env.clock.advance(STEP);
    let previous = code_at(&seed, env.now() - STEP);
    env.login_now("alice", &seed, "192.0.2.1").await.expect("next step");
    assert_eq!(env.login("alice", PASSWORD, &previous, "192.0.2.3").await, Err(AuthError::Denied), "older step");
}

async fn concurrent_replay_has_one_winner(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    let pw = Secret::from_string(PASSWORD.into());
    let who = first_factor(&env.app, "alice", FirstFactor::Password(&pw), ip("192.0.2.1")).await.expect("password");
    let code = code_at(&seed, env.now());
    let (a, b2) = tokio::join!(
        second_factor(&env.app, &who, &code, ip("192.0.2.1"), "password"),
        second_factor(&env.app, &who, &code, ip("192.0.2.2"), "password"),
    );
    let wins = [&a, &b2].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "one code, two logins: {a:?} {b2:?}");
    assert!(a == Err(AuthError::Denied) || b2 == Err(AuthError::Denied), "{a:?} {b2:?}");
    env.assert_chain_intact().await;
}

async fn another_users_code_is_refused(b: Backend) {
    let env = Env::new(b).await;
    let alice = env.user("alice").await;
    let bob = env.user("bob").await;
    let bobs = code_at(&bob, env.now());
    let alices: Vec<String> = (-1..=1).map(|k| code_at(&alice, env.now() + k * STEP)).collect();
    if !alices.contains(&bobs) {
        assert_eq!(env.login("alice", PASSWORD, &bobs, "192.0.2.1").await, Err(AuthError::Denied));
    }
    // Each with their own code works.
    env.login_now("alice", &alice, "192.0.2.1").await.expect("alice");
    env.login_now("bob", &bob, "192.0.2.1").await.expect("bob");
}

async fn one_step_of_skew_is_accepted_two_are_not(b: Backend) {
    let env = Env::new(b).await;
    for (name, offset, accepted) in
        [("behind1", -1, true), ("ahead1", 1, true), ("behind2", -2, false), ("ahead2", 2, false)]
    {
        let seed = env.user(name).await;
        let code = code_at(&seed, env.now() + offset * STEP);
        let in_window: Vec<String> = (-1..=1).map(|k| code_at(&seed, env.now() + k * STEP)).collect();
        if !accepted && in_window.contains(&code) {
            continue; // The far code happens to equal a near one (one chance in ~300000).
        }
        let r = env.login(name, PASSWORD, &code, "192.0.2.1").await;
        assert_eq!(r.is_ok(), accepted, "{offset} steps: {r:?}");
    }
}

async fn lockout_per_user_and_release_after_window(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    // Five failures from five addresses: the user scope counts them all.
    for n in 1..=5 {
        let r = env.login("alice", "wrong password!", &code_at(&seed, env.now()), &format!("198.51.100.{n}")).await;
        assert_eq!(r, Err(AuthError::Denied), "failure {n}");
    }
    // Now even the right password and code from a fresh address are refused.
    assert_eq!(env.login_now("alice", &seed, "203.0.113.7").await, Err(AuthError::LockedOut));
    // Another user is not affected.
    let bob = env.user("bob").await;
    env.login_now("bob", &bob, "203.0.113.7").await.expect("bob is not locked");
    // Still locked one second before the window (900 s) has passed since the failures...
    env.clock.advance(899);
    assert_eq!(env.login_now("alice", &seed, "203.0.113.7").await, Err(AuthError::LockedOut));
    // ...and released when it has.
    env.clock.advance(1);
    env.login_now("alice", &seed, "203.0.113.7").await.expect("released after the window");
    let locks = env.audit_details("login.locked_out").await;
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(locks[0]["scope"], "user:alice");
    assert_eq!(locks[0]["until"], T0 + 900);
}

async fn wrong_codes_count_towards_lockout(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    for n in 1..=5 {
        let r = env.login("alice", PASSWORD, &wrong_code(&seed, env.now()), &format!("198.51.100.{n}")).await;
        assert_eq!(r, Err(AuthError::Denied), "failure {n}");
    }
    assert_eq!(env.login_now("alice", &seed, "203.0.113.7").await, Err(AuthError::LockedOut));
    // The password step alone is refused too.
    let pw = Secret::from_string(PASSWORD.into());
    let r = first_factor(&env.app, "alice", FirstFactor::Password(&pw), ip("203.0.113.8")).await;
    assert_eq!(r, Err(AuthError::LockedOut));
}

async fn lockout_per_source_address_across_user_names(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    let bob = env.user("bob").await;
    // A password spray: five names (some real, some not) from one address.
    for name in ["root", "admin", "bob", "operator", "bob"] {
        assert_eq!(env.login(name, "Winter2030!", "000000", "198.51.100.66").await, Err(AuthError::Denied), "{name}");
    }
    assert_eq!(env.login_now("alice", &seed, "198.51.100.66").await, Err(AuthError::LockedOut));
    // The same user from elsewhere is fine: alice herself never failed.
    env.login_now("alice", &seed, "198.51.100.67").await.expect("other address");
    // bob failed twice only: not locked as a user.
    env.clock.advance(STEP);
    env.login_now("bob", &bob, "198.51.100.68").await.expect("bob is not locked");
    let locks = env.audit_details("login.locked_out").await;
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(locks[0]["scope"], "addr:198.51.100.66");
    // After the window the address may try again.
    env.clock.advance(900);
    env.login_now("alice", &seed, "198.51.100.66").await.expect("address released");
}

async fn success_clears_the_users_failures(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    for n in 1..=4 {
        let r = env.login("alice", "wrong password!", "000000", &format!("198.51.100.{n}")).await;
        assert_eq!(r, Err(AuthError::Denied));
    }
    env.login_now("alice", &seed, "203.0.113.1").await.expect("4 failures do not lock");
    env.clock.advance(STEP);
    for n in 11..=14 {
        let r = env.login("alice", "wrong password!", "000000", &format!("198.51.100.{n}")).await;
        assert_eq!(r, Err(AuthError::Denied));
    }
    // 8 failures within the window, but the success in between reset the count.
    env.login_now("alice", &seed, "203.0.113.1").await.expect("the success reset the count");
}

async fn unknown_user_gets_the_same_answer(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    let code = code_at(&seed, env.now());
    let unknown = env.login("mallory", PASSWORD, &code, "192.0.2.1").await;
    let wrong = env.login("alice", "wrong password!", &code, "192.0.2.2").await;
    assert_eq!(unknown, Err(AuthError::Denied));
    assert_eq!(unknown, wrong);
    assert_eq!(unknown.unwrap_err().to_string(), "authentication failed");
    let pw = Secret::from_string(PASSWORD.into());
    let r = first_factor(&env.app, "mallory", FirstFactor::Password(&pw), ip("192.0.2.3")).await;
    assert_eq!(r, Err(AuthError::Denied));
    // Names that are not even valid user names get the same answer.
    for name in ["", "mallory@plc", "x".repeat(500).as_str()] {
        assert_eq!(env.login(name, PASSWORD, &code, "192.0.2.4").await, Err(AuthError::Denied), "{name:?}");
    }
}

async fn disabled_and_expired_users_are_refused(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    users::disable(&env.app, "test", "alice").await.expect("disable");
    assert_eq!(env.login_now("alice", &seed, "192.0.2.1").await, Err(AuthError::Denied));

    // Expired a second ago.
    let old = env.user_with("olga", Some(PASSWORD), Some(T0 - 1)).await;
    assert_eq!(env.login_now("olga", &old, "192.0.2.2").await, Err(AuthError::Denied));
    // Works until its expiry, not after.
    let temp = env.user_with("tim", Some(PASSWORD), Some(T0 + 60)).await;
    env.login_now("tim", &temp, "192.0.2.3").await.expect("before expiry");
    env.clock.advance(60);
    assert_eq!(env.login_now("tim", &temp, "192.0.2.3").await, Err(AuthError::Denied));

    // An account disabled between the two factors is refused at the second.
    let seed = env.user("dora").await;
    let pw = Secret::from_string(PASSWORD.into());
    let who = first_factor(&env.app, "dora", FirstFactor::Password(&pw), ip("192.0.2.4")).await.expect("password");
    users::disable(&env.app, "test", "dora").await.expect("disable");
    let r = second_factor(&env.app, &who, &code_at(&seed, env.now()), ip("192.0.2.4"), "password").await;
    assert_eq!(r, Err(AuthError::Denied));
}

async fn account_without_password_refuses_passwords(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user_with("keyonly", None, None).await;
    for pw in ["", PASSWORD, "anything-at-all"] {
        assert_eq!(env.login("keyonly", pw, &code_at(&seed, env.now()), "192.0.2.1").await, Err(AuthError::Denied));
    }
}

async fn public_key_first_factor(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user_with("alice", None, None).await;
    let key = penstock::keys::generate_ed25519();
    let other = penstock::keys::generate_ed25519();
    let line = format!("{} alice@laptop", penstock::keys::to_openssh(key.public_key()));
    users::add_key(&env.app, "test", "alice", &line).await.expect("add key");
    let who = first_factor(&env.app, "alice", FirstFactor::VerifiedKey(key.public_key()), ip("192.0.2.1"))
        .await
        .expect("enrolled key");
    second_factor(&env.app, &who, &code_at(&seed, env.now()), ip("192.0.2.1"), "publickey").await.expect("code");
    let r = first_factor(&env.app, "alice", FirstFactor::VerifiedKey(other.public_key()), ip("192.0.2.1")).await;
    assert_eq!(r, Err(AuthError::Denied));
    let r = first_factor(&env.app, "nobody", FirstFactor::VerifiedKey(key.public_key()), ip("192.0.2.1")).await;
    assert_eq!(r, Err(AuthError::Denied));
    let logins = env.audit_details("login.succeeded").await;
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0]["method"], "publickey+totp");
}

async fn failures_and_successes_are_audited(b: Backend) {
    let env = Env::new(b).await;
    let seed = env.user("alice").await;
    env.login_now("alice", &seed, "192.0.2.1").await.expect("login");
    let _ = env.login("alice", "wrong password!", "000000", "192.0.2.2").await;
    let _ = env.login("mallory", PASSWORD, "000000", "192.0.2.3").await;
    assert_eq!(
        env.audit_kinds().await,
        ["initialized", "user.added", "login.succeeded", "login.failed", "login.failed"]
    );
    let ok = &env.audit_details("login.succeeded").await[0];
    assert_eq!(ok["user"], "alice");
    assert_eq!(ok["method"], "password+totp");
    assert_eq!(ok["source"], "192.0.2.1");
    let failed = env.audit_details("login.failed").await;
    assert_eq!(failed[0]["user"], "alice");
    assert_eq!(failed[0]["source"], "192.0.2.2");
    assert_eq!(failed[1]["user"], "mallory");
    // The audit never holds the password that was tried.
    let all =
        serde_json::to_string(&penstock::audit::read(&env.app.store, 0, 1000).await.expect("audit")).expect("json");
    assert!(!all.contains("wrong password!") && !all.contains(PASSWORD), "{all}");
    env.assert_chain_intact().await;
}
