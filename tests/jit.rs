//! Just-in-time access through the library, on an installation made by the real `penstock init`,
//! on SQLite and PostgreSQL: request validation against policies and maintenance windows,
//! approvals with dual control, the grant interval (window, start, duration and policy bounds,
//! across DST changes), expiry, the one-time grant credential at login, revocation, the gateway
//! command set, and the audit trail of every step.
//!
//! Time is a [`ManualClock`]: windows, expiries and TOTP steps are crossed without sleeping.
//! Policies are written as `.toml` files into the test's scratch folder and loaded with
//! `Policies::reload`, exactly as the server loads them. Tests run through [`run`] rather than
//! `common::block_on` (see there why).

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::NaiveDateTime;
use common::{Backend, Install};
use penstock::access::requests::{self, Ask, Request, State};
use penstock::access::{self, parse_duration};
use penstock::app::App;
use penstock::audit::{self, Verdict};
use penstock::auth::totp::{code_at, STEP};
use penstock::auth::{login_password, login_password_for, AuthError};
use penstock::clock::{Clock, ManualClock};
use penstock::error::Error;
use penstock::secret::Secret;
use penstock::ssh::commands;
use penstock::targets::{self, CredentialKind, NewTarget};
use penstock::users::{self, NewUser, Role, User};
use serde_json::Value;

/// `backend_tests_async!` with [`run`] instead of `common::block_on`: `sqlite::NAME` and
/// `postgres::NAME` from `async fn NAME(b: Backend)`.
macro_rules! jit_tests {
    ($( $(#[$attr:meta])* fn $name:ident; )*) => {
        mod sqlite {
            $( $(#[$attr])* #[test] fn $name() { super::run(super::$name(crate::common::Backend::Sqlite)) } )*
        }
        mod postgres {
            $( $(#[$attr])* #[test] fn $name() { super::run(super::$name(crate::common::Backend::Postgres)) } )*
        }
    };
}

jit_tests! {
    fn request_validation;
    fn requester_rules_of_the_policy;
    fn outside_the_window_names_the_next_opening;
    fn inside_the_window_and_future_start_are_accepted;
    fn dual_control_needs_two_distinct_approvers;
    fn who_may_decide;
    fn deny_and_cancel;
    fn decided_requests_cannot_be_approved;
    fn concurrent_approvals_issue_one_grant;
    fn grant_is_cut_at_the_window_close;
    fn grant_shorter_than_the_window_starts_at_approval;
    fn grant_with_future_start_starts_then;
    fn grant_waits_for_the_next_window_opening;
    fn grant_is_capped_by_the_policy_maximum;
    fn grant_never_outlasts_the_requested_interval;
    fn pending_request_expires;
    fn dst_fall_back_window_ends_at_local_close;
    fn dst_spring_forward_window_ends_at_local_close;
    fn grant_credential_stands_in_for_the_password;
    fn grant_credential_is_never_stored_in_clear;
    fn revoke_rules;
    fn command_set;
    fn every_step_is_audited;
}

/// Runs a test on its own runtime, like `common::block_on`, but shuts the runtime down without
/// waiting for its worker threads. sqlx 0.8.6's pool maintenance task can, rarely, spin forever
/// on a worker (launchbadge/sqlx#3645: `PoolInner::release` publishes a connection before it
/// counts it idle, a concurrent `pop_idle` wraps `num_idle` to `usize::MAX`, and the task's
/// first sweep, run at pool creation while the migrations use the pool, loops that many times
/// without yielding). `Runtime::drop` then waits for that worker forever and the whole test
/// binary hangs after the test has finished; this way the spinning thread only dies with the
/// process.
fn run<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(f)));
    rt.shutdown_background();
    out.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// UTC instant of `YYYY-MM-DD HH:MM`.
fn utc(s: &str) -> i64 {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("date-time").and_utc().timestamp()
}

/// Local wall-clock time of `t` in Berlin, with the zone abbreviation.
fn berlin(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .expect("instant")
        .with_timezone(&chrono_tz::Europe::Berlin)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// Wednesday 2026-12-02 10:00 UTC (11:00 in Berlin): outside the weekend window.
fn wed() -> i64 {
    utc("2026-12-02 10:00")
}

const POLICIES: &[(&str, &str)] = &[
    (
        "10-dual.toml",
        r#"
[policy]
name = "dual-control"
description = "safety systems: two approvals"

[match]
targets = ["sis-*"]

[request]
users = ["ursula"]
orgs = ["Acme Automation"]
roles = ["manager"]

[approval]
# victor is a vendor: naming him must not make him an approver.
approvers = ["victor"]
approver_roles = ["manager"]
required = 2

[limits]
max_duration = "4h"
"#,
    ),
    (
        "20-line.toml",
        r#"
[policy]
name = "line-maintenance"

[match]
targets = ["plc-*"]

[request]
roles = ["vendor"]

[approval]
approver_roles = ["manager"]
required = 1

[limits]
max_duration = "8h"
"#,
    ),
    (
        "30-weekend.toml",
        r#"
[policy]
name = "weekend"

[match]
targets = ["ws-*"]

[request]
roles = ["vendor"]

[approval]
approver_roles = ["manager"]
required = 1

[limits]
max_duration = "12h"

[[windows]]
weekly = "Sat 22:00 - Sun 06:00"
timezone = "Europe/Berlin"
"#,
    ),
    (
        "40-daily.toml",
        r#"
[policy]
name = "daily"

[match]
targets = ["daily-*"]

[request]
roles = ["vendor"]

[approval]
approver_roles = ["manager"]
required = 1

[limits]
max_duration = "1d"

[[windows]]
weekly = "Mon-Sun 10:00 - 11:00"
timezone = "UTC"
"#,
    ),
];

/// Users: (name, role, org). None has a password (vendors log in with grant credentials).
const CAST: &[(&str, Role, Option<&str>)] = &[
    ("alice", Role::Vendor, Some("Acme Automation")),
    ("bob", Role::Vendor, Some("Other Corp")),
    ("ursula", Role::Vendor, None),
    ("victor", Role::Vendor, Some("Victor GmbH")),
    ("mia", Role::Manager, None),
    ("mona", Role::Manager, None),
    ("max", Role::Manager, None),
    ("audrey", Role::Auditor, None),
    ("adam", Role::Admin, None),
];

/// Targets; `lab-1` is covered by no policy.
const TARGETS: &[&str] = &["plc-line3", "plc-line4", "sis-pump1", "sis-pump2", "ws-turbine", "daily-1", "lab-1"];

struct Env {
    install: Install,
    app: App,
    clock: Arc<ManualClock>,
    users: BTreeMap<String, User>,
}

impl Env {
    async fn new(b: Backend, t0: i64) -> Env {
        let install = Install::new(b);
        let app = install.app().await;
        let clock = Arc::new(ManualClock::new(t0));
        let app = App { clock: clock.clone(), ..app };
        let dir = install.scratch().join("policies");
        std::fs::create_dir_all(&dir).expect("policies dir");
        for (file, text) in POLICIES {
            std::fs::write(dir.join(file), text).expect("write policy");
        }
        assert_eq!(app.policies.reload(&dir).expect("load policies"), POLICIES.len());
        let mut users = BTreeMap::new();
        for (name, role, org) in CAST {
            users::add(
                &app,
                "test",
                NewUser {
                    name: name.to_string(),
                    role: *role,
                    org: org.map(str::to_string),
                    expires_at: None,
                    password: None,
                },
            )
            .await
            .expect("add user");
            users.insert(name.to_string(), users::get(&app, name).await.expect("user"));
        }
        for t in TARGETS {
            targets::add(
                &app,
                "test",
                NewTarget {
                    name: t.to_string(),
                    protocol: "ssh".into(),
                    address: "10.0.3.15:22".into(),
                    login: "maint".into(),
                    credential: (CredentialKind::Password, Secret::from_string(format!("target-pw-{t}"))),
                    host_key: None,
                    site: None,
                    zone: None,
                    criticality: None,
                    legacy_crypto: false,
                    cert_sha256: None,
                    rdp_nla: true,
                },
            )
            .await
            .expect("add target");
        }
        Env { install, app, clock, users }
    }

    fn now(&self) -> i64 {
        self.clock.now()
    }

    fn u(&self, name: &str) -> &User {
        self.users.get(name).unwrap_or_else(|| panic!("no user {name}"))
    }

    async fn ask(
        &self,
        who: &str,
        target: &str,
        duration: &str,
        reason: &str,
        start: Option<&str>,
    ) -> penstock::error::Result<Request> {
        let ask = Ask {
            target: target.into(),
            duration: parse_duration(duration).expect("duration"),
            reason: reason.into(),
            start: start.map(str::to_string),
        };
        requests::create(&self.app, self.u(who), &ask).await
    }

    /// Files a request that must be accepted.
    async fn asked(&self, who: &str, target: &str, duration: &str, start: Option<&str>) -> Request {
        let r = self.ask(who, target, duration, "CHG-4711 firmware update", start).await;
        r.unwrap_or_else(|e| panic!("{who} asks {target} for {duration}: {e}"))
    }

    async fn approve(&self, who: &str, id: i64) -> penstock::error::Result<Request> {
        requests::approve(&self.app, self.u(who), id, None).await
    }

    /// A request by `who` on a one-approval target, approved by mia; returns it and its grant.
    async fn granted(&self, who: &str, target: &str, duration: &str) -> (Request, access::Grant) {
        let r = self.asked(who, target, duration, None).await;
        let r = self.approve("mia", r.id).await.expect("approve");
        assert_eq!(r.state, State::Approved);
        let g = access::get(&self.app, r.grant_id.expect("grant id")).await.expect("grant");
        (r, g)
    }

    async fn get(&self, id: i64) -> Request {
        requests::get(&self.app, id).await.expect("request")
    }

    async fn grants_of(&self, who: &str) -> Vec<access::Grant> {
        access::list(&self.app, Some(self.u(who).id)).await.expect("grants")
    }

    async fn all_grants(&self) -> Vec<access::Grant> {
        access::list(&self.app, None).await.expect("grants")
    }

    async fn audit(&self) -> Vec<audit::Record> {
        audit::read(&self.app.store, 0, 100_000).await.expect("audit")
    }

    /// (actor, at, details) of every event of `kind`.
    async fn events(&self, kind: &str) -> Vec<(String, i64, Value)> {
        self.audit()
            .await
            .into_iter()
            .filter(|r| r.kind == kind)
            .map(|r| (r.actor.clone(), r.at, serde_json::from_str(r.details.get()).expect("details")))
            .collect()
    }

    async fn assert_chain_intact(&self) {
        match audit::verify(&self.app.store).await.expect("verify") {
            Verdict::Intact { .. } => {}
            broken => panic!("audit chain broken: {broken:?}"),
        }
    }

    async fn seed(&self, who: &str) -> Secret {
        users::totp_seed(&self.app, self.u(who).id).await.expect("seed").expect("enrolled")
    }

    /// Runs a gateway command line as `who`.
    async fn cmd(&self, who: &str, line: &str) -> commands::Output {
        commands::run(&self.app, self.u(who), std::net::IpAddr::from([127, 0, 0, 1]), line).await
    }
}

#[track_caller]
fn err<T: std::fmt::Debug>(r: penstock::error::Result<T>) -> Error {
    r.expect_err("expected a refusal")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

// ---------------------------------------------------------------------------------------------
// Request validation

async fn request_validation(b: Backend) {
    let env = Env::new(b, wed()).await;

    // Unknown target.
    let e = err(env.ask("alice", "nope", "2h", "CHG-1", None).await);
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    assert_eq!(e.to_string(), "unknown target \"nope\"");

    // A target no policy covers.
    let e = err(env.ask("alice", "lab-1", "2h", "CHG-1", None).await);
    assert!(matches!(e, Error::Denied(_)), "{e:?}");
    assert_eq!(e.to_string(), "no policy covers lab-1; ask an administrator");

    // Empty or blank reason.
    for reason in ["", "   ", "\t\n"] {
        let e = err(env.ask("alice", "plc-line3", "2h", reason, None).await);
        assert!(matches!(e, Error::Invalid(_)), "{reason:?}: {e:?}");
        assert!(e.to_string().starts_with("a reason is required"), "{e}");
    }

    // Zero and negative durations: refused by the parser, and by `create` itself.
    for s in ["0h", "0m", "0s", "-2h", "-1", "2", ""] {
        let e = parse_duration(s).expect_err(s);
        assert!(e.to_string().starts_with(&format!("invalid duration {s:?}")), "{e}");
    }
    for duration in [0, -3600] {
        let ask = Ask { target: "plc-line3".into(), duration, reason: "CHG-1".into(), start: None };
        let e = err(requests::create(&env.app, env.u("alice"), &ask).await);
        assert_eq!(e.to_string(), "the duration must be positive", "{duration}");
    }

    // Over the policy maximum: the message names the maximum and the policy.
    let e = err(env.ask("alice", "plc-line3", "9h", "CHG-1", None).await);
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert_eq!(e.to_string(), "9h exceeds the maximum of 8h allowed by policy line-maintenance");
    let e = err(env.ask("alice", "sis-pump1", "4h1s", "CHG-1", None).await);
    assert_eq!(e.to_string(), "4h1s exceeds the maximum of 4h allowed by policy dual-control");

    // A start in the past (the policy has no window, so its zone is UTC).
    let e = err(env.ask("alice", "plc-line3", "2h", "CHG-1", Some("2026-12-02 09:58")).await);
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert_eq!(e.to_string(), "the start 2026-12-02 09:58:00 UTC is in the past");
    let e = err(env.ask("alice", "plc-line3", "2h", "CHG-1", Some("tomorrow")).await);
    assert!(e.to_string().starts_with("invalid --start \"tomorrow\""), "{e}");

    // Nothing was filed by any of these.
    assert!(requests::list(&env.app, None, false).await.expect("list").is_empty());
    assert!(env.events("request.created").await.is_empty());

    // The boundaries are accepted: exactly the maximum, a start now.
    let r = env.asked("alice", "plc-line3", "8h", None).await;
    assert_eq!((r.state, r.duration, r.required, r.policy.as_str()), (State::Pending, 8 * 3600, 1, "line-maintenance"));
    assert_eq!(r.created_at, wed());
    assert_eq!(r.reason, "CHG-4711 firmware update");
    let r = env.asked("alice", "sis-pump1", "4h", Some("2026-12-02 10:00")).await;
    assert_eq!((r.start_at, r.required), (Some(wed()), 2));
    // The reason is stored trimmed.
    let r = env.ask("alice", "plc-line3", "1h", "  CHG-9  ", None).await.expect("request");
    assert_eq!(r.reason, "CHG-9");
    assert_eq!(requests::list(&env.app, None, false).await.expect("list").len(), 3);
}

async fn requester_rules_of_the_policy(b: Backend) {
    let env = Env::new(b, wed()).await;
    // dual-control lets in: users = [ursula], orgs = [Acme Automation], roles = [manager].
    for (who, why) in [("alice", "org"), ("ursula", "user name"), ("mona", "role")] {
        let r = env.ask(who, "sis-pump1", "1h", "CHG-1", None).await;
        assert!(r.is_ok(), "{who} is named by {why}: {r:?}");
    }
    // bob: a vendor of another org; victor: named as an approver, not a requester; audrey: an
    // auditor; adam: an admin.
    for who in ["bob", "victor", "audrey", "adam"] {
        let e = err(env.ask(who, "sis-pump1", "1h", "CHG-1", None).await);
        assert!(matches!(e, Error::Denied(_)), "{who}: {e:?}");
        assert_eq!(e.to_string(), format!("policy dual-control does not let {who} request access to sis-pump1"));
    }
    // line-maintenance names only the vendor role: a manager may not ask there.
    let e = err(env.ask("mia", "plc-line3", "1h", "CHG-1", None).await);
    assert_eq!(e.to_string(), "policy line-maintenance does not let mia request access to plc-line3");
    assert!(env.ask("bob", "plc-line3", "1h", "CHG-1", None).await.is_ok());
    assert_eq!(requests::list(&env.app, None, false).await.expect("list").len(), 4);
}

async fn outside_the_window_names_the_next_opening(b: Backend) {
    let env = Env::new(b, wed()).await;
    // Wednesday 2026-12-02 11:00 in Berlin (winter, UTC+1).
    let e = err(env.ask("alice", "ws-turbine", "2h", "CHG-1", None).await);
    assert!(matches!(e, Error::Denied(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "Wed 2026-12-02 11:00 Europe/Berlin (2026-12-02 10:00:00 UTC) is outside the maintenance windows of \
         policy weekend; the next window opens Sat 2026-12-05 22:00 Europe/Berlin (2026-12-05 21:00:00 UTC)"
    );
    // In summer time (UTC+2) the same local opening is an hour earlier in UTC.
    env.clock.set(utc("2026-10-21 10:00"));
    let e = err(env.ask("alice", "ws-turbine", "2h", "CHG-1", None).await);
    assert_eq!(
        e.to_string(),
        "Wed 2026-10-21 12:00 Europe/Berlin (2026-10-21 10:00:00 UTC) is outside the maintenance windows of \
         policy weekend; the next window opens Sat 2026-10-24 22:00 Europe/Berlin (2026-10-24 20:00:00 UTC)"
    );
    // One minute before the opening, still outside; the closing minute is outside too.
    env.clock.set(utc("2026-12-05 20:59"));
    let e = err(env.ask("alice", "ws-turbine", "2h", "CHG-1", None).await);
    assert!(e.to_string().contains("the next window opens Sat 2026-12-05 22:00 Europe/Berlin"), "{e}");
    env.clock.set(utc("2026-12-06 05:00"));
    let e = err(env.ask("alice", "ws-turbine", "2h", "CHG-1", None).await);
    assert!(e.to_string().starts_with("Sun 2026-12-06 06:00 Europe/Berlin"), "{e}");
    assert!(e.to_string().contains("the next window opens Sat 2026-12-12 22:00 Europe/Berlin"), "{e}");
    // A requested start outside the window is refused the same way, from that start.
    env.clock.set(wed());
    let e = err(env.ask("alice", "ws-turbine", "2h", "CHG-1", Some("2026-12-06 07:00")).await);
    assert_eq!(
        e.to_string(),
        "Sun 2026-12-06 07:00 Europe/Berlin (2026-12-06 06:00:00 UTC) is outside the maintenance windows of \
         policy weekend; the next window opens Sat 2026-12-12 22:00 Europe/Berlin (2026-12-12 21:00:00 UTC)"
    );
    assert!(requests::list(&env.app, None, false).await.expect("list").is_empty());
}

async fn inside_the_window_and_future_start_are_accepted(b: Backend) {
    let env = Env::new(b, wed()).await;
    // On Wednesday, for Saturday 23:00 Berlin (22:00 UTC): accepted, start read in Berlin time.
    let r = env.asked("alice", "ws-turbine", "2h", Some("2026-12-05 23:00")).await;
    assert_eq!(r.state, State::Pending);
    assert_eq!(r.start_at, Some(utc("2026-12-05 22:00")));
    assert_eq!(r.created_at, wed());
    // Inside the window, now: Saturday 23:00 Berlin.
    env.clock.set(utc("2026-12-05 22:00"));
    let r = env.asked("alice", "ws-turbine", "2h", None).await;
    assert_eq!((r.state, r.start_at), (State::Pending, None));
    // The first minute and the last minute of the window.
    env.clock.set(utc("2026-12-05 21:00"));
    env.asked("alice", "ws-turbine", "1h", None).await;
    env.clock.set(utc("2026-12-06 04:59"));
    env.asked("alice", "ws-turbine", "1h", None).await;
    // A start in the past is refused even inside the window (read in Berlin time).
    let e = err(env.ask("alice", "ws-turbine", "1h", "CHG-1", Some("2026-12-06 05:30")).await);
    assert_eq!(e.to_string(), "the start Sun 2026-12-06 05:30 Europe/Berlin (2026-12-06 04:30:00 UTC) is in the past");
    assert_eq!(requests::list(&env.app, None, false).await.expect("list").len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Approvals

async fn dual_control_needs_two_distinct_approvers(b: Backend) {
    let env = Env::new(b, wed()).await;
    let r = env.asked("alice", "sis-pump1", "2h", None).await;
    assert_eq!((r.required, r.approvals, r.state), (2, 0, State::Pending));

    env.clock.advance(60);
    let r1 = requests::approve(&env.app, env.u("mia"), r.id, Some("first")).await.expect("first approval");
    assert_eq!((r1.state, r1.approvals, r1.required, r1.grant_id), (State::Pending, 1, 2, None));
    assert!(env.all_grants().await.is_empty(), "one approval of two issues nothing");

    // The same approver again: refused, and it does not count.
    let e = err(env.approve("mia", r.id).await);
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    assert_eq!(e.to_string(), format!("you have already approved request {}", r.id));
    let now = env.get(r.id).await;
    assert_eq!((now.state, now.approvals, now.grant_id), (State::Pending, 1, None));
    assert!(env.all_grants().await.is_empty());
    assert_eq!(env.events("request.approved").await.len(), 1);

    // A second, different approver completes it: exactly one grant, for the requester.
    env.clock.advance(60);
    let r2 = requests::approve(&env.app, env.u("mona"), r.id, Some("second")).await.expect("second approval");
    assert_eq!((r2.state, r2.approvals, r2.required), (State::Approved, 2, 2));
    assert_eq!(r2.decided_by.as_deref(), Some("mona"));
    assert_eq!(r2.decision_comment.as_deref(), Some("second"));
    let grants = env.all_grants().await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    let g = &grants[0];
    assert_eq!(Some(g.id), r2.grant_id);
    assert_eq!((g.user_id, g.created_by.as_str()), (env.u("alice").id, "mona"));
    assert_eq!(g.target_id, targets::get(&env.app, "sis-pump1").await.expect("target").id);
    assert_eq!((g.valid_from, g.valid_until), (env.now(), env.now() + 2 * 3600));
    assert!(g.live_at(env.now()));

    // A third approval is refused: the request is decided.
    let e = err(env.approve("max", r.id).await);
    assert_eq!(e.to_string(), format!("request {} is approved", r.id));
    assert_eq!(env.all_grants().await.len(), 1);
    assert_eq!(env.get(r.id).await.approvals, 2);
}

async fn who_may_decide(b: Backend) {
    let env = Env::new(b, wed()).await;
    // mona is a manager, allowed to ask (by role) and named as an approver (by role): still not
    // for her own request.
    let own = env.asked("mona", "sis-pump1", "1h", None).await;
    let e = err(env.approve("mona", own.id).await);
    assert!(matches!(e, Error::Denied(_)), "{e:?}");
    assert_eq!(e.to_string(), "you cannot decide your own request");
    let e = err(requests::deny(&env.app, env.u("mona"), own.id, None).await);
    assert_eq!(e.to_string(), "you cannot decide your own request");

    let r = env.asked("alice", "sis-pump1", "1h", None).await;
    // victor is named by the policy as an approver, but is a vendor.
    let e = err(env.approve("victor", r.id).await);
    assert!(matches!(e, Error::Denied(_)), "{e:?}");
    assert_eq!(e.to_string(), "vendors cannot decide requests");
    // The requester, a vendor, neither.
    let e = err(env.approve("alice", r.id).await);
    assert_eq!(e.to_string(), "vendors cannot decide requests");
    // An auditor and an admin are not named by the policy (approver_roles = [manager]).
    for who in ["audrey", "adam"] {
        let e = err(env.approve(who, r.id).await);
        assert!(matches!(e, Error::Denied(_)), "{who}: {e:?}");
        assert_eq!(e.to_string(), format!("policy dual-control does not name {who} as an approver"));
        let e = err(requests::deny(&env.app, env.u(who), r.id, None).await);
        assert_eq!(e.to_string(), format!("policy dual-control does not name {who} as an approver"));
    }
    // None of that counted.
    for id in [own.id, r.id] {
        let now = env.get(id).await;
        assert_eq!((now.state, now.approvals), (State::Pending, 0), "request {id}");
    }
    assert!(env.events("request.approved").await.is_empty());
    // Two managers do it.
    env.approve("mia", own.id).await.expect("mia");
    let done = env.approve("max", own.id).await.expect("max");
    assert_eq!(done.state, State::Approved);
    assert_eq!(env.grants_of("mona").await.len(), 1);
    assert!(env.grants_of("alice").await.is_empty());
}

async fn deny_and_cancel(b: Backend) {
    let env = Env::new(b, wed()).await;
    // Deny by an approver, after one approval: denied, no grant.
    let r = env.asked("alice", "sis-pump1", "1h", None).await;
    env.approve("mia", r.id).await.expect("first approval");
    env.clock.advance(30);
    let d = requests::deny(&env.app, env.u("mona"), r.id, Some("not during the batch")).await.expect("deny");
    assert_eq!(d.state, State::Denied);
    assert_eq!(d.decided_by.as_deref(), Some("mona"));
    assert_eq!(d.decision_comment.as_deref(), Some("not during the batch"));
    assert_eq!(d.grant_id, None);
    assert!(env.all_grants().await.is_empty());

    // Cancel: by someone else refused (another vendor, a manager), by the requester works.
    let c = env.asked("alice", "plc-line3", "1h", None).await;
    for who in ["bob", "mia"] {
        let e = err(requests::cancel(&env.app, env.u(who), c.id).await);
        assert!(matches!(e, Error::Denied(_)), "{who}: {e:?}");
        assert_eq!(e.to_string(), format!("request {} is not yours", c.id));
        assert_eq!(env.get(c.id).await.state, State::Pending);
    }
    let done = requests::cancel(&env.app, env.u("alice"), c.id).await.expect("cancel");
    assert_eq!((done.state, done.decided_by.as_deref()), (State::Cancelled, Some("alice")));
    // Twice: refused.
    let e = err(requests::cancel(&env.app, env.u("alice"), c.id).await);
    assert_eq!(e.to_string(), format!("request {} is cancelled", c.id));
    // An approved request cannot be cancelled either.
    let (a, _) = env.granted("alice", "plc-line3", "1h").await;
    let e = err(requests::cancel(&env.app, env.u("alice"), a.id).await);
    assert_eq!(e.to_string(), format!("request {} is approved", a.id));
    assert_eq!(env.get(a.id).await.state, State::Approved);
}

async fn decided_requests_cannot_be_approved(b: Backend) {
    let env = Env::new(b, wed()).await;
    let denied = env.asked("alice", "plc-line3", "1h", None).await;
    requests::deny(&env.app, env.u("mia"), denied.id, None).await.expect("deny");
    let cancelled = env.asked("alice", "plc-line3", "1h", None).await;
    requests::cancel(&env.app, env.u("alice"), cancelled.id).await.expect("cancel");
    let expiring = env.asked("alice", "plc-line3", "30m", None).await;
    env.clock.advance(1800);
    for (id, state) in [(denied.id, "denied"), (cancelled.id, "cancelled"), (expiring.id, "expired")] {
        let e = err(env.approve("mona", id).await);
        assert!(matches!(e, Error::Invalid(_)), "{state}: {e:?}");
        assert_eq!(e.to_string(), format!("request {id} is {state}"));
        let e = err(requests::deny(&env.app, env.u("mona"), id, None).await);
        assert_eq!(e.to_string(), format!("request {id} is {state}"));
    }
    assert_eq!(env.get(expiring.id).await.state, State::Expired);
    assert!(env.all_grants().await.is_empty());
    assert!(env.events("request.approved").await.is_empty());
}

async fn concurrent_approvals_issue_one_grant(b: Backend) {
    let env = Env::new(b, wed()).await;
    // Two approvers at once on a fresh dual-control request: both count, one grant.
    let r = env.asked("alice", "sis-pump1", "1h", None).await;
    let (a, c) = tokio::join!(env.approve("mia", r.id), env.approve("mona", r.id));
    a.expect("mia");
    c.expect("mona");
    // (Each returns the request as read after its commit, so both may already say approved;
    // the audit records what each approval saw inside its transaction.)
    let now = env.get(r.id).await;
    assert_eq!((now.state, now.approvals), (State::Approved, 2));
    assert_eq!(env.all_grants().await.len(), 1);
    let counts: Vec<i64> =
        env.events("request.approved").await.iter().map(|e| e.2["approvals"].as_i64().expect("n")).collect();
    assert_eq!(counts, [1, 2]);

    // Two approvers at once when one approval is missing: one wins, the other is refused.
    let r = env.asked("alice", "sis-pump2", "1h", None).await;
    env.approve("mia", r.id).await.expect("first");
    let (a, c) = tokio::join!(env.approve("mona", r.id), env.approve("max", r.id));
    let oks = [&a, &c].iter().filter(|x| x.is_ok()).count();
    assert_eq!(oks, 1, "{a:?} {c:?}");
    let loser = if a.is_err() { a } else { c };
    assert_eq!(err(loser).to_string(), format!("request {} is approved", r.id));
    let now = env.get(r.id).await;
    assert_eq!((now.state, now.approvals), (State::Approved, 2));
    assert_eq!(env.all_grants().await.len(), 2, "one grant per request");
    assert_eq!(env.events("grant.issued").await.len(), 2);
    env.assert_chain_intact().await;
}

// ---------------------------------------------------------------------------------------------
// The grant interval

async fn grant_is_cut_at_the_window_close(b: Backend) {
    // Sunday 05:00 in Berlin, an hour before the window closes.
    let env = Env::new(b, utc("2026-12-06 04:00")).await;
    let r = env.asked("alice", "ws-turbine", "2h", None).await;
    env.clock.advance(600);
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!(g.valid_from, utc("2026-12-06 04:10"), "from the approval");
    assert_eq!(g.valid_until, utc("2026-12-06 05:00"), "cut at 06:00 Berlin, not start + 2h");
    assert_eq!(berlin(g.valid_until), "2026-12-06 06:00 CET");
    // The audited grant says the same.
    let issued = env.events("grant.issued").await;
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].2["valid_from"], g.valid_from);
    assert_eq!(issued[0].2["valid_until"], g.valid_until);
}

async fn grant_shorter_than_the_window_starts_at_approval(b: Backend) {
    // Saturday 23:00 in Berlin; the window lasts until 06:00.
    let env = Env::new(b, utc("2026-12-05 22:00")).await;
    let r = env.asked("alice", "ws-turbine", "1h30m", None).await;
    env.clock.advance(20 * 60);
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!(g.valid_from, utc("2026-12-05 22:20"), "from the approval, not the request");
    assert_eq!(g.valid_until, utc("2026-12-05 23:50"), "approval + duration");
    assert!(g.live_at(env.now()));
    // Without windows (line-maintenance) it is approval + duration as well.
    let r = env.asked("alice", "plc-line3", "8h", None).await;
    env.clock.advance(3600);
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!((g.valid_from, g.valid_until), (env.now(), env.now() + 8 * 3600));
}

async fn grant_with_future_start_starts_then(b: Backend) {
    let env = Env::new(b, wed()).await;
    // Saturday 23:00 Berlin for 2h, approved on Wednesday.
    let r = env.asked("alice", "ws-turbine", "2h", Some("2026-12-05 23:00")).await;
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!((g.valid_from, g.valid_until), (utc("2026-12-05 22:00"), utc("2026-12-06 00:00")));
    assert!(!g.live_at(env.now()), "not yet");
    // Its credential does not open the target before the start, does at the start.
    let cred = requests::grant_credential(&env.app, g.id).await.expect("credential").expect("some");
    let alice = env.u("alice").id;
    assert!(!requests::grant_credential_matches(&env.app, alice, "ws-turbine", &cred).await.expect("match"));
    env.clock.set(g.valid_from - 1);
    assert!(!requests::grant_credential_matches(&env.app, alice, "ws-turbine", &cred).await.expect("match"));
    env.clock.set(g.valid_from);
    assert!(requests::grant_credential_matches(&env.app, alice, "ws-turbine", &cred).await.expect("match"));
    // A future start near the close: start + 12h is cut at 06:00 Berlin.
    env.clock.set(wed());
    let r = env.asked("alice", "ws-turbine", "12h", Some("2026-12-06 04:00")).await;
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!((g.valid_from, g.valid_until), (utc("2026-12-06 03:00"), utc("2026-12-06 05:00")));
}

async fn grant_waits_for_the_next_window_opening(b: Backend) {
    // Window every day 10:00-11:00 UTC; asked at 10:30, approved at 11:30 after it closed.
    let env = Env::new(b, utc("2026-12-02 10:30")).await;
    let long = env.asked("alice", "daily-1", "1d", None).await;
    let short = env.asked("alice", "daily-1", "20h", None).await;
    env.clock.set(utc("2026-12-02 11:30"));
    let r = env.approve("mia", long.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!(g.valid_from, utc("2026-12-03 10:00"), "from the next window opening");
    assert_eq!(g.valid_until, utc("2026-12-03 11:00"), "to its close");
    // 20h from now ends before the next window opens: refused, and nothing half-done.
    let e = err(env.approve("mia", short.id).await);
    assert!(matches!(e, Error::Denied(_)), "{e:?}");
    assert_eq!(e.to_string(), "the maintenance window has closed for this request");
    let now = env.get(short.id).await;
    assert_eq!((now.state, now.approvals, now.grant_id), (State::Pending, 0, None));
    assert_eq!(env.all_grants().await.len(), 1);
    assert_eq!(env.events("request.approved").await.len(), 1);
}

async fn grant_is_capped_by_the_policy_maximum(b: Backend) {
    let env = Env::new(b, wed()).await;
    let r = env.asked("alice", "plc-line3", "6h", None).await;
    // The policy is tightened to 2h while the request waits.
    let mut set = (*env.app.policies.current()).clone();
    set.policies.iter_mut().find(|p| p.name == "line-maintenance").expect("policy").max_duration = 2 * 3600;
    env.app.policies.replace(set);
    env.clock.advance(300);
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!((g.valid_from, g.valid_until), (env.now(), env.now() + 2 * 3600));
}

/// A request with `--start S` for D asks for [S, S + D): that is what approvers see and when
/// the request itself stops being useful (`Request::expires_at`). Approved late, after S but
/// before S + D, the grant must still end at S + D.
async fn grant_never_outlasts_the_requested_interval(b: Backend) {
    let env = Env::new(b, wed()).await;
    // No window (line-maintenance, UTC): 12:00 to 13:00, approved at 12:30.
    let r = env.asked("alice", "plc-line3", "1h", Some("2026-12-02 12:00")).await;
    assert_eq!(r.expires_at(), utc("2026-12-02 13:00"));
    env.clock.set(utc("2026-12-02 12:30"));
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!(g.valid_from, utc("2026-12-02 12:30"));
    assert_eq!(g.valid_until, utc("2026-12-02 13:00"), "the grant ends when the requested interval ends");
    // In the weekend window: Saturday 23:00 Berlin for 2h (to 01:00), approved at 00:30.
    env.clock.set(wed());
    let r = env.asked("alice", "ws-turbine", "2h", Some("2026-12-05 23:00")).await;
    env.clock.set(utc("2026-12-05 23:30"));
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!(g.valid_from, utc("2026-12-05 23:30"));
    assert_eq!(g.valid_until, utc("2026-12-06 00:00"), "01:00 Berlin, as requested; not 02:30");
}

// ---------------------------------------------------------------------------------------------
// Expiry

async fn pending_request_expires(b: Backend) {
    let env = Env::new(b, wed()).await;
    let now_req = env.asked("alice", "plc-line3", "2h", None).await;
    // Starts at 12:00 for 1h: expires at 13:00, not at created + 1h.
    let later = env.asked("alice", "plc-line4", "1h", Some("2026-12-02 12:00")).await;
    let (approved, _) = env.granted("alice", "plc-line3", "1h").await;

    env.clock.advance(2 * 3600 - 1);
    assert_eq!(requests::expire_due(&env.app).await.expect("expire"), 0);
    assert_eq!(env.get(now_req.id).await.state, State::Pending);
    env.clock.advance(1);
    assert_eq!(requests::expire_due(&env.app).await.expect("expire"), 1);
    assert_eq!(env.get(now_req.id).await.state, State::Expired);
    assert_eq!(env.get(later.id).await.state, State::Pending, "its start is later");
    assert_eq!(env.get(approved.id).await.state, State::Approved, "decided requests do not expire");
    let e = err(env.approve("mia", now_req.id).await);
    assert_eq!(e.to_string(), format!("request {} is expired", now_req.id));
    let expired = env.events("request.expired").await;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0, "system");
    assert_eq!(expired[0].1, wed() + 2 * 3600);
    assert_eq!(expired[0].2["request_id"], now_req.id);

    // Listing expires what is due as well.
    env.clock.set(utc("2026-12-02 13:00"));
    let pending = requests::list(&env.app, None, true).await.expect("list");
    assert!(pending.is_empty(), "{pending:?}");
    assert_eq!(env.get(later.id).await.state, State::Expired);
    assert_eq!(env.events("request.expired").await.len(), 2);
    // Nothing left to expire; no duplicate events.
    assert_eq!(requests::expire_due(&env.app).await.expect("expire"), 0);
    assert_eq!(env.events("request.expired").await.len(), 2);
    env.assert_chain_intact().await;
}

// ---------------------------------------------------------------------------------------------
// DST

async fn dst_fall_back_window_ends_at_local_close(b: Backend) {
    // Night of 2026-10-24/25: 22:00 CEST (20:00 UTC) to 06:00 CET (05:00 UTC), 9 real hours.
    let env = Env::new(b, utc("2026-10-24 21:00")).await;
    let r = env.asked("alice", "ws-turbine", "12h", None).await;
    env.clock.advance(300);
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!(g.valid_from, utc("2026-10-24 21:05"));
    assert_eq!(g.valid_until, utc("2026-10-25 05:00"));
    assert_eq!(berlin(g.valid_until), "2026-10-25 06:00 CET");
    // After the change: Sunday 05:30 CET, 2h asked, 30 minutes left.
    env.clock.set(utc("2026-10-25 04:30"));
    let g = env.granted("alice", "ws-turbine", "2h").await.1;
    assert_eq!((g.valid_from, g.valid_until), (utc("2026-10-25 04:30"), utc("2026-10-25 05:00")));
    // 05:00 UTC is 06:00 CET: closed. (Read at a fixed +2 offset it would still be open.)
    env.clock.set(utc("2026-10-25 05:00"));
    let e = err(env.ask("alice", "ws-turbine", "1h", "CHG-1", None).await);
    assert!(e.to_string().starts_with("Sun 2026-10-25 06:00 Europe/Berlin"), "{e}");
    // A start at the ambiguous 02:30 takes the earlier instant (CEST, 00:30 UTC).
    env.clock.set(utc("2026-10-21 10:00"));
    let r = env.asked("alice", "ws-turbine", "12h", Some("2026-10-25 02:30")).await;
    assert_eq!(r.start_at, Some(utc("2026-10-25 00:30")));
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!((g.valid_from, g.valid_until), (utc("2026-10-25 00:30"), utc("2026-10-25 05:00")));
}

async fn dst_spring_forward_window_ends_at_local_close(b: Backend) {
    // Night of 2026-03-28/29: 22:00 CET (21:00 UTC) to 06:00 CEST (04:00 UTC), 7 real hours.
    let env = Env::new(b, utc("2026-03-28 21:30")).await;
    let r = env.asked("alice", "ws-turbine", "12h", None).await;
    env.clock.advance(300);
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!(g.valid_from, utc("2026-03-28 21:35"));
    assert_eq!(g.valid_until, utc("2026-03-29 04:00"), "06:00 CEST, not 06:00 CET (05:00 UTC)");
    assert_eq!(berlin(g.valid_until), "2026-03-29 06:00 CEST");
    // 04:30 UTC is 06:30 CEST: closed, although it would be 05:30 at the winter offset.
    env.clock.set(utc("2026-03-29 04:30"));
    let e = err(env.ask("alice", "ws-turbine", "1h", "CHG-1", None).await);
    assert!(e.to_string().starts_with("Sun 2026-03-29 06:30 Europe/Berlin"), "{e}");
    assert!(e.to_string().contains("the next window opens Sat 2026-04-04 22:00 Europe/Berlin"), "{e}");
    // A start at 02:30, which does not exist that night, means 03:00 CEST (01:00 UTC).
    env.clock.set(utc("2026-03-25 10:00"));
    let r = env.asked("alice", "ws-turbine", "12h", Some("2026-03-29 02:30")).await;
    assert_eq!(r.start_at, Some(utc("2026-03-29 01:00")));
    let r = env.approve("mia", r.id).await.expect("approve");
    let g = access::get(&env.app, r.grant_id.expect("grant")).await.expect("grant");
    assert_eq!((g.valid_from, g.valid_until), (utc("2026-03-29 01:00"), utc("2026-03-29 04:00")));
}

// ---------------------------------------------------------------------------------------------
// The grant credential

async fn grant_credential_stands_in_for_the_password(b: Backend) {
    // Starts mid-step so that advancing by STEP always reaches a fresh TOTP step.
    let env = Env::new(b, wed() + 10).await;
    let seed = env.seed("alice").await;
    let (_, g) = env.granted("alice", "plc-line3", "2h").await;
    let cred = requests::grant_credential(&env.app, g.id).await.expect("credential").expect("issued");
    assert!(cred.len() >= 20, "a long random credential");
    let code = |env: &Env| code_at(&seed, env.now());

    // alice has no password: the credential is her first factor for plc-line3.
    let who = login_password_for(&env.app, "alice", &cred, Some("plc-line3"), &code(&env), ip("192.0.2.1"))
        .await
        .expect("credential login");
    assert_eq!((who.name.as_str(), who.role), ("alice", Role::Vendor));

    // Not for another target, not without a target, not for another user; nor any password.
    env.clock.advance(STEP);
    let refusals = [
        ("alice", cred.clone(), Some("plc-line4"), "192.0.2.11"),
        ("alice", cred.clone(), None, "192.0.2.12"),
        ("bob", cred.clone(), Some("plc-line3"), "192.0.2.13"),
        ("alice", Secret::from_string("some-password-123".into()), Some("plc-line3"), "192.0.2.14"),
    ];
    for (user, pw, target, from) in &refusals {
        let r = match target {
            Some(t) => login_password_for(&env.app, user, pw, Some(*t), &code(&env), ip(from)).await,
            None => login_password(&env.app, user, pw, &code(&env), ip(from)).await,
        };
        assert_eq!(r, Err(AuthError::Denied), "{user} for {target:?}");
    }
    // Still fine for plc-line3 (this also clears alice's failures).
    login_password_for(&env.app, "alice", &cred, Some("plc-line3"), &code(&env), ip("192.0.2.1")).await.expect("again");

    // Until the last second of the grant, not at its end.
    env.clock.set(g.valid_until - 1);
    login_password_for(&env.app, "alice", &cred, Some("plc-line3"), &code(&env), ip("192.0.2.1"))
        .await
        .expect("last second");
    env.clock.set(g.valid_until + STEP);
    let r = login_password_for(&env.app, "alice", &cred, Some("plc-line3"), &code(&env), ip("192.0.2.21")).await;
    assert_eq!(r, Err(AuthError::Denied), "after valid_until");

    // A new grant has a new credential; revoking it ends its use at once.
    let (_, g2) = env.granted("alice", "plc-line3", "1h").await;
    let cred2 = requests::grant_credential(&env.app, g2.id).await.expect("credential").expect("issued");
    assert_ne!(cred2, cred);
    let r = login_password_for(&env.app, "alice", &cred, Some("plc-line3"), &code(&env), ip("192.0.2.22")).await;
    assert_eq!(r, Err(AuthError::Denied), "the old credential stays dead");
    login_password_for(&env.app, "alice", &cred2, Some("plc-line3"), &code(&env), ip("192.0.2.1"))
        .await
        .expect("new credential");
    access::revoke(&env.app, "mia", g2.id).await.expect("revoke");
    env.clock.advance(STEP);
    let r = login_password_for(&env.app, "alice", &cred2, Some("plc-line3"), &code(&env), ip("192.0.2.23")).await;
    assert_eq!(r, Err(AuthError::Denied), "after revoke");
    // The successful logins are audited as password logins.
    let ok = env.events("login.succeeded").await;
    assert_eq!(ok.len(), 4, "{ok:?}");
    assert!(ok.iter().all(|(_, _, d)| d["user"] == "alice" && d["method"] == "password+totp"), "{ok:?}");
}

async fn grant_credential_is_never_stored_in_clear(b: Backend) {
    let env = Env::new(b, wed()).await;
    let r = env.ask("alice", "plc-line3", "2h", "CHG-31337 clear-text reason", None).await.expect("request");
    let r = env.approve("mia", r.id).await.expect("approve");
    let gid = r.grant_id.expect("grant");
    let cred = requests::grant_credential(&env.app, gid).await.expect("credential").expect("issued");
    // Shown to its vendor through the command set...
    let out = env.cmd("alice", "grants --show-credential --json").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v[0]["credential"].as_str(), cred.expose_str());
    // ...audited with where it was shown and from which address...
    let shown = env.events("grant.credential_shown").await;
    assert_eq!(shown.len(), 1, "{shown:?}");
    let (_, _, d) = &shown[0];
    assert_eq!(
        (d["grant_id"].as_i64(), d["via"].as_str(), d["source"].as_str()),
        (Some(gid), Some("ssh"), Some("127.0.0.1")),
        "{d}"
    );
    // ...and only when asked for.
    let out = env.cmd("alice", "grants --json").await;
    assert!(!out.stdout.contains(cred.expose_str().expect("text")), "{}", out.stdout);
    assert_eq!(
        env.events("grant.credential_shown").await.len(),
        1,
        "listing without the credential is not audited as shown"
    );
    // Never in the database or any file of the installation (nor PostgreSQL's files or dump).
    let places = env.install.find_secret(cred.expose());
    assert!(places.is_empty(), "grant credential in clear in: {places:?}");
    // Sanity check of the scan: the reason, stored in clear, is found.
    assert!(!env.install.find_secret(b"CHG-31337 clear-text reason").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Revoke

async fn revoke_rules(b: Backend) {
    let env = Env::new(b, wed()).await;
    let (r1, g1) = env.granted("alice", "plc-line3", "2h").await;
    // The grant's own vendor, another vendor, an auditor: refused.
    for who in ["alice", "bob", "audrey"] {
        let e = err(requests::revoke(&env.app, env.u(who), r1.id, false).await);
        assert!(matches!(e, Error::Denied(_)), "{who}: {e:?}");
        assert_eq!(e.to_string(), format!("{who} may not revoke grant {}", g1.id));
    }
    // victor is named as an approver by dual-control, but is a vendor.
    let d = env.asked("alice", "sis-pump1", "2h", None).await;
    env.approve("mia", d.id).await.expect("first");
    let g2 = env.approve("mona", d.id).await.expect("second").grant_id.expect("grant");
    let e = err(requests::revoke(&env.app, env.u("victor"), g2, true).await);
    assert_eq!(e.to_string(), format!("victor may not revoke grant {g2}"));
    assert!(env.all_grants().await.iter().all(|g| g.revoked_at.is_none()), "nothing revoked yet");
    assert!(env.events("grant.revoked").await.is_empty());

    // A manager revokes by request id.
    env.clock.advance(600);
    let g = requests::revoke(&env.app, env.u("mia"), r1.id, false).await.expect("revoke");
    assert_eq!((g.id, g.revoked_at), (g1.id, Some(env.now())));
    assert!(!g.live_at(env.now()));
    assert_eq!(access::live_grant(&env.app, g.user_id, g.target_id, env.now()).await.expect("live"), None);
    // Again: already ended, with a clear message.
    let e = err(requests::revoke(&env.app, env.u("mona"), r1.id, false).await);
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert_eq!(e.to_string(), format!("grant {} has already ended", g1.id));
    // A grant past its end, by grant id.
    env.clock.advance(3 * 3600);
    let e = err(requests::revoke(&env.app, env.u("mia"), g2, true).await);
    assert_eq!(e.to_string(), format!("grant {g2} has already ended"));
    assert_eq!(access::get(&env.app, g2).await.expect("grant").revoked_at, None);
    // A request without a grant.
    let p = env.asked("alice", "plc-line3", "1h", None).await;
    let e = err(requests::revoke(&env.app, env.u("mia"), p.id, false).await);
    assert_eq!(e.to_string(), format!("request {} has no grant", p.id));
    // Exactly one revocation was recorded.
    let revoked = env.events("grant.revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].0, "mia");
    assert_eq!(revoked[0].2["grant_id"], g1.id);
}

// ---------------------------------------------------------------------------------------------
// The gateway command set

async fn command_set(b: Backend) {
    let env = Env::new(b, wed()).await;
    let out = env.cmd("alice", r#"request plc-line3 --for 2h --reason "CHG-4711 firmware 2.1" --json"#).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.is_empty());
    let v: Value = serde_json::from_str(&out.stdout).expect("request --json is JSON");
    assert_eq!(v["state"], "pending");
    assert_eq!(v["target"], "plc-line3");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["reason"], "CHG-4711 firmware 2.1");
    assert_eq!(v["duration"], 7200);
    assert_eq!(v["required"], 1);
    let id = v["id"].as_i64().expect("id");
    // bob's own request, in plain text.
    let out = env.cmd("bob", "request plc-line4 --for 90m --reason CHG-5").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("request ") && out.stdout.contains("pending: 0/1"), "{}", out.stdout);

    // A manager sees both pending requests; a vendor only their own.
    let out = env.cmd("mia", "requests --pending").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let row = out.stdout.lines().find(|l| l.starts_with(&format!("{id} "))).expect("alice's request listed");
    assert!(row.contains("pending") && row.contains("alice") && row.contains("plc-line3"), "{row}");
    assert!(out.stdout.contains("bob"), "{}", out.stdout);
    let out = env.cmd("mia", "requests --pending --json").await;
    let list: Vec<Value> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(list.len(), 2);
    let out = env.cmd("alice", "requests --json").await;
    let list: Vec<Value> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(list.iter().map(|r| r["user"].as_str()).collect::<Vec<_>>(), [Some("alice")]);

    // A vendor cannot approve: non-zero code, a message, nothing changes.
    let out = env.cmd("alice", &format!("approve {id}")).await;
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr, "penstock: vendors cannot decide requests\n");
    assert!(out.stdout.is_empty());
    assert_eq!(env.get(id).await.state, State::Pending);
    // Unknown request, unknown target: "not found" codes.
    let out = env.cmd("mia", "approve 999999").await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    let out = env.cmd("alice", "request nope --for 1h --reason x").await;
    assert_eq!((out.code, out.stderr.as_str()), (4, "penstock: unknown target \"nope\"\n"));
    // Bad durations are refused with a message.
    for d in ["0h", "=-2h", "2x"] {
        let line = if let Some(neg) = d.strip_prefix('=') {
            format!("request plc-line3 --for={neg} --reason x")
        } else {
            format!("request plc-line3 --for {d} --reason x")
        };
        let out = env.cmd("alice", &line).await;
        assert_ne!(out.code, 0, "{line}");
        assert!(out.stderr.contains("invalid duration"), "{line}: {}", out.stderr);
    }
    // A manager approves.
    let out = env.cmd("mia", &format!("approve {id} --comment 'looks fine'")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let gid = env.get(id).await.grant_id.expect("grant");
    assert_eq!(out.stdout, format!("request {id} approved (1/1); grant {gid} issued\n"));
    let out = env.cmd("alice", "grants --json").await;
    let grants: Vec<Value> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(grants.len(), 1);
    assert_eq!((grants[0]["id"].as_i64(), grants[0]["live"].as_bool()), (Some(gid), Some(true)));
    // A vendor cannot revoke; a manager can.
    let out = env.cmd("alice", &format!("revoke {id}")).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.stderr, format!("penstock: alice may not revoke grant {gid}\n"));
    let out = env.cmd("mia", &format!("revoke {gid} --grant")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // help lists the commands; approving ones only for those who may approve.
    let out = env.cmd("alice", "help").await;
    assert_eq!(out.code, 0);
    for c in ["request TARGET --for", "requests [--pending]", "grants", "cancel ID"] {
        assert!(out.stdout.contains(c), "help lacks {c:?}:\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("approve ID"), "{}", out.stdout);
    let out = env.cmd("mia", "help").await;
    for c in ["approve ID", "deny ID", "revoke ID"] {
        assert!(out.stdout.contains(c), "help lacks {c:?}:\n{}", out.stdout);
    }
    // A malformed line: exit code 2 with a message; nothing filed.
    let before = requests::list(&env.app, None, false).await.expect("list").len();
    let out = env.cmd("alice", "request plc-line3 --for 2h --reason 'CHG-1").await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("unterminated single quote"), "{}", out.stderr);
    let out = env.cmd("alice", "request plc-line3 --for 2h --reason \"CHG-1").await;
    assert_eq!(out.code, 2);
    let out = env.cmd("alice", "frobnicate").await;
    assert_eq!(out.code, 2);
    assert_eq!(requests::list(&env.app, None, false).await.expect("list").len(), before);
}

// ---------------------------------------------------------------------------------------------
// Audit

async fn every_step_is_audited(b: Backend) {
    let env = Env::new(b, wed()).await;
    let skip = env.audit().await.len();
    let t = |k: i64| wed() + k * 60;

    let r1 = env.ask("alice", "sis-pump1", "1h", "CHG-1 audit trail", None).await.expect("r1");
    env.clock.set(t(1));
    requests::approve(&env.app, env.u("mia"), r1.id, Some("first look")).await.expect("mia");
    env.clock.set(t(2));
    let done = requests::approve(&env.app, env.u("mona"), r1.id, Some("second look")).await.expect("mona");
    let gid = done.grant_id.expect("grant");
    let g = access::get(&env.app, gid).await.expect("grant");
    env.clock.set(t(3));
    let r2 = env.asked("alice", "plc-line3", "1h", None).await;
    env.clock.set(t(4));
    requests::deny(&env.app, env.u("mia"), r2.id, Some("not today")).await.expect("deny");
    env.clock.set(t(5));
    let r3 = env.asked("alice", "plc-line3", "1h", None).await;
    env.clock.set(t(6));
    requests::cancel(&env.app, env.u("alice"), r3.id).await.expect("cancel");
    env.clock.set(t(7));
    requests::revoke(&env.app, env.u("mia"), r1.id, false).await.expect("revoke");
    env.clock.set(t(8));
    let r4 = env.asked("alice", "plc-line4", "30m", None).await;
    env.clock.set(t(8) + 1800);
    assert_eq!(requests::expire_due(&env.app).await.expect("expire"), 1);

    let events: Vec<(String, String, i64, Value)> = env.audit().await[skip..]
        .iter()
        .map(|r| (r.kind.clone(), r.actor.clone(), r.at, serde_json::from_str(r.details.get()).expect("json")))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "request.created",
            "request.approved",
            "request.approved",
            "grant.issued",
            "request.created",
            "request.denied",
            "request.created",
            "request.cancelled",
            "grant.revoked",
            "request.created",
            "request.expired",
        ]
    );
    let actors: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(actors, ["alice", "mia", "mona", "mona", "alice", "mia", "alice", "alice", "mia", "alice", "system"]);
    let ats: Vec<i64> = events.iter().map(|e| e.2).collect();
    assert_eq!(ats, [t(0), t(1), t(2), t(2), t(3), t(4), t(5), t(6), t(7), t(8), t(8) + 1800]);
    let d = |i: usize| &events[i].3;
    assert_eq!(d(0)["request_id"], r1.id);
    assert_eq!((d(0)["user"].as_str(), d(0)["target"].as_str()), (Some("alice"), Some("sis-pump1")));
    assert_eq!((d(0)["policy"].as_str(), d(0)["reason"].as_str()), (Some("dual-control"), Some("CHG-1 audit trail")));
    assert_eq!((d(0)["duration"].as_i64(), d(0)["start_at"].is_null()), (Some(3600), true));
    for (i, by, comment, n) in [(1, "mia", "first look", 1), (2, "mona", "second look", 2)] {
        assert_eq!(d(i)["request_id"], r1.id);
        assert_eq!((d(i)["by"].as_str(), d(i)["comment"].as_str()), (Some(by), Some(comment)));
        assert_eq!((d(i)["approvals"].as_i64(), d(i)["required"].as_i64()), (Some(n), Some(2)));
    }
    assert_eq!(d(3)["grant_id"], gid);
    assert_eq!(
        (d(3)["user"].as_str(), d(3)["target"].as_str(), d(3)["by"].as_str()),
        (Some("alice"), Some("sis-pump1"), Some("mona"))
    );
    assert_eq!((d(3)["valid_from"].as_i64(), d(3)["valid_until"].as_i64()), (Some(g.valid_from), Some(g.valid_until)));
    assert_eq!(
        (d(5)["request_id"].as_i64(), d(5)["by"].as_str(), d(5)["reason"].as_str()),
        (Some(r2.id), Some("mia"), Some("not today"))
    );
    assert_eq!((d(7)["request_id"].as_i64(), d(7)["by"].as_str()), (Some(r3.id), Some("alice")));
    assert_eq!((d(8)["grant_id"].as_i64(), d(8)["by"].as_str()), (Some(gid), Some("mia")));
    assert_eq!(d(10)["request_id"], r4.id);
    env.assert_chain_intact().await;
    match audit::verify(&env.app.store).await.expect("verify") {
        Verdict::Intact { count, .. } => assert_eq!(count as usize, skip + events.len()),
        broken => panic!("{broken:?}"),
    }
}
