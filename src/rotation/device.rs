//! What rotation does on the target, over the gateway's own SSH client
//! ([`crate::ssh::upstream`]): `passwd` driven over a PTY (the new password never appears on a
//! command line, in the process list or in shell history), and `authorized_keys` edits for key
//! targets (public keys only on the command line).

use std::time::Duration;

use anyhow::Context;
use russh::ChannelMsg;

use crate::secret::Secret;
use crate::ssh::upstream::Connection;

/// How long `passwd` or a command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Output kept for prompt matching and error messages.
const KEEP: usize = 4096;

/// What `passwd` did.
#[derive(Debug)]
pub enum Change {
    /// It reported success (exit status 0).
    Done,
    /// It refused the new password (rule, history, wrong current password…); the message is
    /// the device's own last line, with any secret scrubbed.
    Rejected(String),
    /// The answer never came (connection dropped, time-out): the device may or may not have
    /// changed the password.
    Unknown(String),
}

/// Lines of device output that mean the change was refused.
const REFUSALS: &[&str] = &[
    "bad password",
    "must choose",
    "do not match",
    "don't match",
    "too short",
    "too simple",
    "manipulation error",
    "unchanged",
    "exhausted",
    "not changed",
    "failure",
    "error",
];

/// Removes every occurrence of the secrets from `text` (a device that echoes anyway must not
/// put a password into an error message).
fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut t = text.to_string();
    for s in secrets {
        if let Some(v) = s.expose_str().filter(|v| !v.is_empty()) {
            t = t.replace(v, "[REDACTED]");
        }
    }
    t
}

/// The last non-empty line of device output that reads like a refusal, else the last line.
fn last_message(text: &str, secrets: &[&Secret]) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let has = |l: &&&str, words: &[&str]| {
        let l = l.to_ascii_lowercase();
        words.iter().any(|r| l.contains(r))
    };
    // The device's reason ("You must choose a longer password") beats its summary ("password
    // unchanged").
    let pick = lines
        .iter()
        .find(|l| has(l, &REFUSALS[..6]))
        .or_else(|| lines.iter().rev().find(|l| has(l, REFUSALS)))
        .or(lines.last())
        .copied()
        .unwrap_or("no message");
    let one: String = scrub(pick, secrets).chars().filter(|c| !c.is_control()).take(200).collect();
    one
}

/// What a prompt asks for.
#[derive(Debug, PartialEq, Eq)]
enum Prompt {
    Current,
    New,
}

/// Classifies the text after the last answer: a prompt ends with `:` (or `: `) and mentions a
/// password.
fn prompt(pending: &str) -> Option<Prompt> {
    let last = pending.lines().last().unwrap_or("").trim_end();
    if !last.ends_with(':') {
        return None;
    }
    let l = last.to_ascii_lowercase();
    if !l.contains("password") && !l.contains("passphrase") {
        return None;
    }
    if l.contains("new")
        || l.contains("retype")
        || l.contains("again")
        || l.contains("re-enter")
        || l.contains("repeat")
    {
        Some(Prompt::New)
    } else {
        Some(Prompt::Current)
    }
}

/// Runs `passwd` on a PTY of `conn` and answers its prompts: the current password to
/// "(current) password:", the new one to "New password:" and "Retype new password:". A third
/// request for the new password means the device refused it; the channel is closed then.
pub async fn change_password(conn: &Connection, old: &Secret, new: &Secret) -> anyhow::Result<Change> {
    let mut chan = conn.channel_open_session().await.context("cannot open a channel")?;
    chan.request_pty(false, "dumb", 200, 24, 0, 0, &[]).await.context("cannot request a PTY")?;
    let _ = chan.set_env(false, "LC_ALL", "C").await;
    chan.exec(true, "passwd").await.context("cannot start passwd")?;
    let secrets = [old, new];
    let mut seen = String::new();
    let mut pending = String::new();
    let mut news = 0usize;
    let mut currents = 0usize;
    let mut status: Option<u32> = None;
    let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
    loop {
        let msg = match tokio::time::timeout_at(deadline, chan.wait()).await {
            Ok(m) => m,
            Err(_) => {
                let _ = chan.close().await;
                return Ok(if news >= 2 {
                    Change::Unknown("passwd did not finish in time".into())
                } else {
                    Change::Rejected("passwd did not finish in time".into())
                });
            }
        };
        match msg {
            Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                let text = String::from_utf8_lossy(&data);
                pending.push_str(&text);
                seen.push_str(&text);
                if seen.len() > KEEP {
                    let cut = seen.len() - KEEP;
                    let cut = (cut..seen.len()).find(|i| seen.is_char_boundary(*i)).unwrap_or(seen.len());
                    seen.drain(..cut);
                }
                if pending.len() > KEEP {
                    pending.clear();
                }
                let answer = match prompt(&pending) {
                    Some(Prompt::Current) => {
                        currents += 1;
                        if currents > 2 {
                            let _ = chan.close().await;
                            return Ok(Change::Rejected(format!(
                                "the current password was refused ({})",
                                last_message(&seen, &secrets)
                            )));
                        }
                        old
                    }
                    Some(Prompt::New) => {
                        news += 1;
                        if news > 2 {
                            let _ = chan.close().await;
                            return Ok(Change::Rejected(last_message(&seen, &secrets)));
                        }
                        new
                    }
                    None => continue,
                };
                pending.clear();
                let mut line = answer.expose().to_vec();
                line.push(b'\n');
                chan.data(&line[..]).await.context("cannot answer passwd")?;
                zeroize::Zeroize::zeroize(&mut line);
                if news == 2 {
                    super::test_pause("after_change").await;
                    // A connection that is gone now may never deliver passwd's answer: decide by
                    // logging in, not by whatever arrived before it broke.
                    if conn.is_closed() {
                        return Ok(Change::Unknown(
                            "the connection to the target dropped before passwd answered".into(),
                        ));
                    }
                }
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
            Some(ChannelMsg::Eof) => {}
            Some(ChannelMsg::Close) | None => break,
            Some(_) => {}
        }
    }
    Ok(match status {
        Some(0) if news >= 2 => Change::Done,
        Some(0) => Change::Rejected(format!(
            "passwd exited without asking for a new password ({})",
            last_message(&seen, &secrets)
        )),
        Some(code) => Change::Rejected(format!("{} (exit {code})", last_message(&seen, &secrets))),
        None if news >= 2 => Change::Unknown("the connection closed before passwd answered".into()),
        None => Change::Rejected(format!("passwd ended early ({})", last_message(&seen, &secrets))),
    })
}

/// Runs the admin `command` without a PTY, writing `LOGIN:NEW` and a newline to its standard
/// input (the password never is on a command line), and reports like [`change_password`].
pub async fn change_password_as_admin(
    conn: &Connection,
    command: &str,
    login: &str,
    new: &Secret,
) -> anyhow::Result<Change> {
    anyhow::ensure!(
        !login.is_empty() && !login.contains([':', '\n', '\r']),
        "the login {login:?} cannot be given to the admin command"
    );
    let mut chan = conn.channel_open_session().await.context("cannot open a channel")?;
    chan.exec(true, command.as_bytes()).await.context("cannot run the admin command")?;
    let mut line = zeroize::Zeroizing::new(Vec::with_capacity(login.len() + new.len() + 2));
    line.extend_from_slice(login.as_bytes());
    line.push(b':');
    line.extend_from_slice(new.expose());
    line.push(b'\n');
    chan.data(&line[..]).await.context("cannot write to the admin command")?;
    chan.eof().await.context("cannot close the admin command's input")?;
    super::test_pause("after_change").await;
    if conn.is_closed() {
        return Ok(Change::Unknown("the connection to the admin account dropped before the command answered".into()));
    }
    let mut out = String::new();
    let mut status = None;
    let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, chan.wait()).await {
            Err(_) => return Ok(Change::Unknown("the admin command did not finish in time".into())),
            Ok(Some(ChannelMsg::Data { data })) | Ok(Some(ChannelMsg::ExtendedData { data, .. })) => {
                if out.len() < KEEP {
                    out.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Ok(Some(ChannelMsg::ExitStatus { exit_status })) => status = Some(exit_status),
            Ok(Some(ChannelMsg::Close)) | Ok(None) => break,
            Ok(Some(_)) => {}
        }
    }
    Ok(match status {
        Some(0) => Change::Done,
        Some(code) => Change::Rejected(format!("{} (exit {code})", last_message(&out, &[new]))),
        None => Change::Unknown("the admin command ended without an exit status".into()),
    })
}

/// Runs `cmd` (no secret in it) without a PTY; returns its exit status and output (bounded).
pub async fn run(conn: &Connection, cmd: &str) -> anyhow::Result<(Option<u32>, String)> {
    let mut chan = conn.channel_open_session().await.context("cannot open a channel")?;
    chan.exec(true, cmd.as_bytes()).await.context("cannot run a command")?;
    let mut out = String::new();
    let mut status = None;
    let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, chan.wait()).await.context("the command timed out")? {
            Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                if out.len() < KEEP {
                    out.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
            Some(ChannelMsg::Close) | None => break,
            Some(_) => {}
        }
    }
    Ok((status, out))
}

/// The key blob (second field) of an OpenSSH public key line; only base64 characters.
pub fn key_blob(line: &str) -> Option<String> {
    let blob = line.split_whitespace().nth(1)?;
    blob.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=').then(|| blob.to_string())
}

/// Shell command appending `line` to the account's `~/.ssh/authorized_keys`.
pub fn add_key_command(line: &str) -> anyhow::Result<String> {
    let blob = key_blob(line).context("malformed public key")?;
    let algo = line.split_whitespace().next().unwrap_or("");
    anyhow::ensure!(algo.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'@' || b == b'.'));
    Ok(format!(
        "umask 077 && mkdir -p \"$HOME/.ssh\" && printf '%s\\n' '{algo} {blob} penstock-rotation' >> \"$HOME/.ssh/authorized_keys\""
    ))
}

/// Shell command removing every line holding one of `blobs` from `~/.ssh/authorized_keys`
/// (rewritten in place, so its owner and mode stay).
pub fn remove_keys_command(blobs: &[String]) -> String {
    let pats: String =
        blobs.iter().filter(|b| key_blob(&format!("k {b}")).is_some()).map(|b| format!(" -e '{b}'")).collect();
    format!(
        "f=\"$HOME/.ssh/authorized_keys\"; t=\"$f.penstock.$$\"; grep -v -F{pats} \"$f\" > \"$t\"; s=$?; \
         if [ $s -le 1 ]; then cat \"$t\" > \"$f\" && rm -f \"$t\"; else rm -f \"$t\"; exit 2; fi"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts() {
        assert_eq!(prompt("Changing password for bob.\r\nCurrent password: "), Some(Prompt::Current));
        assert_eq!(prompt("(current) UNIX password:"), Some(Prompt::Current));
        assert_eq!(prompt("\r\nNew password: "), Some(Prompt::New));
        assert_eq!(prompt("Retype new password: "), Some(Prompt::New));
        assert_eq!(prompt("Changing password for bob."), None);
        assert_eq!(prompt("Login:"), None);
    }

    #[test]
    fn messages_are_scrubbed() {
        let s = Secret::from_string("Abc123".into());
        let m = last_message("New password: Abc123\r\nBAD PASSWORD: it is Abc123\r\n", &[&s]);
        assert_eq!(m, "BAD PASSWORD: it is [REDACTED]");
    }

    #[test]
    fn key_commands_quote_only_base64() {
        assert!(add_key_command("ssh-ed25519 AAAAC3Nza+/= c")
            .unwrap()
            .contains("'ssh-ed25519 AAAAC3Nza+/= penstock-rotation'"));
        assert!(add_key_command("ssh-ed25519 AAAA';rm c").is_err());
        let c = remove_keys_command(&["AAAA1".into(), "bad'x".into()]);
        assert!(c.contains("-e 'AAAA1'") && !c.contains("bad"));
    }
}
