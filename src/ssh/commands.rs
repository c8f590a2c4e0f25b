//! The gateway's own command set, for `ssh USER@gateway COMMAND` (no target named): vendors
//! request access and see their grants; managers list, approve, deny and revoke. Every command
//! takes `--json`.

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::access::{self, requests};
use crate::app::App;
use crate::clock::fmt_ts;
use crate::error::Error;
use crate::users::{Role, User};

/// What a command printed and its exit status.
#[derive(Debug, Default)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status.
    pub code: u32,
}

#[derive(Debug, Parser)]
#[command(name = "penstock-gateway", no_binary_name = true, disable_version_flag = true, max_term_width = 100)]
struct Gw {
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Ask for access to a target.
    Request {
        /// Target name.
        target: String,
        /// How long, e.g. 2h or 90m.
        #[arg(long = "for")]
        duration: String,
        /// Why (a change ticket reference is common).
        #[arg(long)]
        reason: String,
        /// Start later: "YYYY-MM-DD HH:MM" in the policy's time zone.
        #[arg(long)]
        start: Option<String>,
    },
    /// List requests (your own; managers see everyone's).
    Requests {
        /// Only pending ones.
        #[arg(long)]
        pending: bool,
    },
    /// Your live and upcoming grants.
    Grants {
        /// Also show each grant's one-time credential.
        #[arg(long)]
        show_credential: bool,
    },
    /// Approve a request.
    Approve {
        /// Request id.
        id: i64,
        /// Comment for the audit trail.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        id: i64,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Withdraw your own pending request.
    Cancel {
        /// Request id.
        id: i64,
    },
    /// End the grant of a request (or a grant with --grant) and its live sessions.
    Revoke {
        /// Request id (or grant id with --grant).
        id: i64,
        /// The id is a grant id.
        #[arg(long)]
        grant: bool,
    },
    /// Who you are logged in as.
    Whoami,
}

/// Splits a command line like a POSIX shell would (quotes and backslashes; no expansion).
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn fail(msg: impl std::fmt::Display, code: u32) -> Output {
    Output { stdout: String::new(), stderr: format!("penstock: {msg}\n"), code }
}

fn ok(text: String) -> Output {
    Output { stdout: text, stderr: String::new(), code: 0 }
}

fn line(r: &requests::Request) -> String {
    let when = r.start_at.map(|s| format!("from {}", fmt_ts(s))).unwrap_or_else(|| "asap".into());
    format!(
        "{:<5} {:<9} {}/{}  {:<14} {:<16} {:<6} {:<28} {}\n",
        r.id,
        format!("{:?}", r.state).to_lowercase(),
        r.approvals,
        r.required,
        r.user,
        r.target,
        access::fmt_duration(r.duration),
        when,
        r.reason
    )
}

/// The help text shown for `help` and an interactive login without a target.
pub fn help(who: &User) -> String {
    let mut s = format!("Penstock gateway — logged in as {} ({})\n\n", who.name, who.role);
    s.push_str(
        "  ssh USER@TARGET@gateway                  connect to a target (asks for access if you have no grant)\n",
    );
    s.push_str("  request TARGET --for 2h --reason TEXT [--start \"YYYY-MM-DD HH:MM\"]\n");
    s.push_str("  requests [--pending]                     your requests (managers: everyone's)\n");
    s.push_str("  grants [--show-credential]               your live and upcoming grants\n");
    s.push_str("  cancel ID                                withdraw your pending request\n");
    if who.role != Role::Vendor {
        s.push_str("  approve ID [--comment TEXT]              approve a request\n");
        s.push_str("  deny ID [--reason TEXT]                  deny a request\n");
        s.push_str("  revoke ID [--grant]                      end a request's grant and its sessions\n");
    }
    if crate::live::may_watch(who) {
        s.push_str("  watch SESSION                            watch a live session (read-only; q or Ctrl-C leaves)\n");
    }
    s.push_str("\nEvery command accepts --json. Example: ssh -p 2222 ");
    s.push_str(&who.name);
    s.push_str("@gateway requests --pending\n");
    s
}

fn err_out(e: Error) -> Output {
    let code = match e {
        Error::Denied(_) => 3,
        Error::NotFound(_) => 4,
        _ => 1,
    };
    fail(e, code)
}

/// Runs one command line for `who`, connected from `source`.
pub async fn run(app: &App, who: &User, source: std::net::IpAddr, line_text: &str) -> Output {
    let argv = match split(line_text) {
        Ok(a) => a,
        Err(e) => return fail(e, 2),
    };
    if argv.is_empty() || argv == ["help"] || argv == ["--help"] {
        return ok(help(who));
    }
    const KNOWN: &[&str] =
        &["request", "requests", "grants", "approve", "deny", "cancel", "revoke", "whoami", "help", "--json"];
    if !KNOWN.contains(&argv[0].as_str()) {
        return fail(
            format!("unknown command {}: to reach a target connect as USER@TARGET@gateway; `help` lists the gateway's commands", argv[0]),
            2,
        );
    }
    let gw = match Gw::try_parse_from(&argv) {
        Ok(g) => g,
        Err(e) => {
            let text = e.render().to_string();
            return if e.use_stderr() { Output { stdout: String::new(), stderr: text, code: 2 } } else { ok(text) };
        }
    };
    match execute(app, who, source, gw.cmd, gw.json).await {
        Ok(o) => o,
        Err(e) => err_out(e),
    }
}

async fn execute(app: &App, who: &User, source: std::net::IpAddr, cmd: Cmd, json: bool) -> Result<Output, Error> {
    let sees_all = matches!(who.role, Role::Manager | Role::Admin | Role::Auditor);
    Ok(match cmd {
        Cmd::Whoami => {
            if json {
                ok(format!("{}\n", json!({ "user": who.name, "role": who.role, "org": who.org })))
            } else {
                ok(format!(
                    "{} ({}{})\n",
                    who.name,
                    who.role,
                    who.org.as_ref().map(|o| format!(", {o}")).unwrap_or_default()
                ))
            }
        }
        Cmd::Request { target, duration, reason, start } => {
            let duration = access::parse_duration(&duration)?;
            let r = requests::create(app, who, &requests::Ask { target, duration, reason, start }).await?;
            if json {
                ok(format!("{}\n", serde_json::to_string(&r).unwrap_or_default()))
            } else {
                ok(format!("request {} pending: 0/{} approvals (policy {})\n", r.id, r.required, r.policy))
            }
        }
        Cmd::Requests { pending } => {
            let list = requests::list(app, if sees_all { None } else { Some(who.id) }, pending).await?;
            if json {
                ok(format!("{}\n", serde_json::to_string(&list).unwrap_or_default()))
            } else {
                let mut s = format!(
                    "{:<5} {:<9} {:<5} {:<14} {:<16} {:<6} {:<28} {}\n",
                    "ID", "STATE", "APPR", "USER", "TARGET", "FOR", "WHEN", "REASON"
                );
                for r in &list {
                    s.push_str(&line(r));
                }
                ok(s)
            }
        }
        Cmd::Grants { show_credential } => {
            let now = app.clock.now();
            let mut rows = Vec::new();
            for g in access::list(app, Some(who.id)).await? {
                if g.revoked_at.is_some() || g.valid_until <= now {
                    continue;
                }
                let target = crate::targets::by_id(app, g.target_id).await.map(|t| t.name).unwrap_or_default();
                let credential = match show_credential {
                    true => match requests::grant_credential(app, g.id).await? {
                        Some(c) => {
                            // Shown only once the showing is audited.
                            requests::credential_shown(app, who, g.id, &target, source, "ssh").await?;
                            c.expose_str().map(str::to_string)
                        }
                        None => None,
                    },
                    false => None,
                };
                rows.push((g, target, credential));
            }
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(g, t, c)| json!({ "id": g.id, "target": t, "valid_from": g.valid_from, "valid_until": g.valid_until, "live": g.live_at(now), "credential": c }))
                    .collect();
                ok(format!("{}\n", serde_json::Value::Array(v)))
            } else if rows.is_empty() {
                ok("no live or upcoming grants\n".into())
            } else {
                let mut s = String::new();
                for (g, t, c) in rows {
                    let state = if g.live_at(now) { "live" } else { "upcoming" };
                    s.push_str(&format!(
                        "grant {} {state}: {t} from {} until {}\n",
                        g.id,
                        fmt_ts(g.valid_from),
                        fmt_ts(g.valid_until)
                    ));
                    if let Some(c) = c {
                        s.push_str(&format!("  credential (use as your password for {t}; TOTP still required): {c}\n"));
                    }
                }
                ok(s)
            }
        }
        Cmd::Approve { id, comment } => {
            let r = requests::approve(app, who, id, comment.as_deref()).await?;
            if json {
                ok(format!("{}\n", serde_json::to_string(&r).unwrap_or_default()))
            } else if r.state == requests::State::Approved {
                ok(format!(
                    "request {id} approved ({}/{}); grant {} issued\n",
                    r.approvals,
                    r.required,
                    r.grant_id.unwrap_or_default()
                ))
            } else {
                ok(format!("request {id}: {}/{} approvals; waiting for more\n", r.approvals, r.required))
            }
        }
        Cmd::Deny { id, reason } => {
            let r = requests::deny(app, who, id, reason.as_deref()).await?;
            if json {
                ok(format!("{}\n", serde_json::to_string(&r).unwrap_or_default()))
            } else {
                ok(format!("request {id} denied\n"))
            }
        }
        Cmd::Cancel { id } => {
            let r = requests::cancel(app, who, id).await?;
            if json {
                ok(format!("{}\n", serde_json::to_string(&r).unwrap_or_default()))
            } else {
                ok(format!("request {id} cancelled\n"))
            }
        }
        Cmd::Revoke { id, grant } => {
            let g = requests::revoke(app, who, id, grant).await?;
            if json {
                ok(format!("{}\n", serde_json::to_string(&g).unwrap_or_default()))
            } else {
                ok(format!("grant {} revoked; its live sessions end within a second\n", g.id))
            }
        }
    })
}

/// The session id when `line_text` is `watch SESSION`; `Err` with the usage error otherwise
/// (`None`: not a watch command).
pub fn watch_arg(line_text: &str) -> Option<Result<String, Output>> {
    let argv = split(line_text).ok()?;
    if argv.first().map(String::as_str) != Some("watch") {
        return None;
    }
    Some(match argv.as_slice() {
        [_, id] if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(id.to_ascii_lowercase()),
        [_, id] => Err(fail(
            format!("invalid session id {:?}: give all 32 hex digits", id.chars().take(40).collect::<String>()),
            2,
        )),
        _ => Err(fail("usage: watch SESSION (the 32-hex-digit id from `penstock sessions` or the console)", 2)),
    })
}

/// `watch SESSION`: streams the live session's screen, as the core's terminal emulator renders
/// it, to the manager's or auditor's terminal until the session ends, the viewer presses q or
/// Ctrl-C, or closes the channel. Nothing the viewer types reaches the session.
pub async fn watch(
    app: &App,
    who: &User,
    id: &str,
    rd: &mut russh::ChannelReadHalf,
    wr: &russh::ChannelWriteHalf<russh::server::Msg>,
) -> Output {
    use crate::live::{Seen, Watcher};
    use bytes::Bytes;
    let mut w = match Watcher::start(app, who, id, "ssh").await {
        Ok(w) => w,
        Err(e) => return err_out(e),
    };
    let intro = format!("\x1b[H\x1b[2J{}", String::from_utf8_lossy(&w.screen().screen().contents_formatted()));
    if wr.data_bytes(Bytes::from(intro)).await.is_err() {
        return Output::default();
    }
    let _ = wr
        .extended_data_bytes(
            1,
            Bytes::from(format!("\r\n[penstock] watching {} ({id}); q or Ctrl-C leaves\r\n", w.title)),
        )
        .await;
    let mut prev = w.screen().screen().clone();
    let mut reading = true;
    let ended = loop {
        tokio::select! {
            seen = w.next() => {
                let cur = w.screen().screen();
                let bytes = match seen {
                    Seen::Ended => break true,
                    Seen::Changed => cur.contents_diff(&prev),
                    Seen::Resynced => {
                        let mut b = b"\x1b[H\x1b[2J".to_vec();
                        b.extend_from_slice(&cur.contents_formatted());
                        b
                    }
                };
                prev = cur.clone();
                if !bytes.is_empty() && wr.data_bytes(Bytes::from(bytes)).await.is_err() {
                    break false;
                }
            }
            msg = rd.wait(), if reading => match msg {
                Some(russh::ChannelMsg::Data { data }) => {
                    if data.iter().any(|b| matches!(b, 0x03 | 0x04 | b'q' | b'Q')) {
                        break false;
                    }
                }
                // Input closed (a client without a terminal): keep watching.
                Some(russh::ChannelMsg::Eof) => reading = false,
                None | Some(russh::ChannelMsg::Close) => break false,
                Some(_) => {}
            }
        }
    };
    let note = if ended { "the session ended" } else { "stopped watching" };
    Output { stdout: String::new(), stderr: format!("\n[penstock] {note}\n"), code: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_split() {
        assert_eq!(
            split(r#"request plc --for 2h --reason "CHG-4711 firmware 2.1""#).unwrap(),
            vec!["request", "plc", "--for", "2h", "--reason", "CHG-4711 firmware 2.1"]
        );
        assert_eq!(split("a 'b c' d\\ e").unwrap(), vec!["a", "b c", "d e"]);
        assert_eq!(split("  ").unwrap(), Vec::<String>::new());
        assert!(split("'open").is_err());
    }
}
