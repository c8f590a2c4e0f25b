//! Access policies from `policies/*.toml`: which targets they cover, who may request and
//! approve, how many distinct approvals are needed, the longest grant, maintenance windows,
//! allowed channels and the idle timeout. Files are read in name order; the first policy whose
//! match fits a target governs it.

pub mod window;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use toml::Spanned;

use crate::targets::Target;
use crate::users::{Role, User};
use window::Window;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    policy: Meta,
    #[serde(rename = "match")]
    matcher: MatchSpec,
    request: WhoSpec,
    approval: ApprovalSpec,
    limits: LimitsSpec,
    #[serde(default)]
    windows: Vec<WindowSpec>,
    #[serde(default)]
    channels: ChannelsSpec,
    #[serde(default)]
    rotation: Option<crate::rotation::rules::Spec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WhoSpec {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    orgs: Vec<String>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalSpec {
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default)]
    approver_roles: Vec<Spanned<String>>,
    required: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    max_duration: Spanned<String>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSpec {
    #[serde(default)]
    weekly: Option<Spanned<String>>,
    #[serde(default)]
    from: Option<Spanned<String>>,
    #[serde(default)]
    to: Option<Spanned<String>>,
    timezone: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsSpec {
    #[serde(default = "yes")]
    shell: bool,
    #[serde(default = "yes")]
    exec: bool,
    #[serde(default = "yes")]
    sftp: bool,
    #[serde(default)]
    forward: Vec<Spanned<String>>,
    #[serde(default)]
    rdp_clipboard: bool,
    #[serde(default)]
    rdp_drive: bool,
}

fn yes() -> bool {
    true
}

impl Default for ChannelsSpec {
    fn default() -> Self {
        Self { shell: true, exec: true, sftp: true, forward: Vec::new(), rdp_clipboard: false, rdp_drive: false }
    }
}

/// Who a rule names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Who {
    /// User names.
    pub users: Vec<String>,
    /// Organisations.
    pub orgs: Vec<String>,
    /// Roles.
    pub roles: Vec<Role>,
}

impl Who {
    /// Whether `u` is named.
    pub fn includes(&self, u: &User) -> bool {
        self.users.contains(&u.name)
            || u.org.as_ref().is_some_and(|o| self.orgs.iter().any(|x| x == o))
            || self.roles.contains(&u.role)
    }
}

/// Channel rules of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Channels {
    /// Interactive shells.
    pub shell: bool,
    /// Commands.
    pub exec: bool,
    /// sftp and scp.
    pub sftp: bool,
    /// `host:port` destinations for `ssh -L`.
    pub forward: Vec<String>,
    /// RDP clipboard redirection (the `cliprdr` static channel).
    pub rdp_clipboard: bool,
    /// RDP device redirection: drives, and with them printers, ports and smart cards (they
    /// share the `rdpdr` static channel).
    pub rdp_drive: bool,
}

impl Default for Channels {
    fn default() -> Self {
        Channels { shell: true, exec: true, sftp: true, forward: Vec::new(), rdp_clipboard: false, rdp_drive: false }
    }
}

/// One compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// File it came from.
    pub file: PathBuf,
    /// Target name globs.
    pub targets: Vec<String>,
    /// Tags a target must all carry.
    pub tags: BTreeMap<String, String>,
    /// Who may request.
    pub requesters: Who,
    /// Who may approve.
    pub approvers: Who,
    /// Distinct approvals needed.
    pub required: u32,
    /// Longest grant, seconds.
    pub max_duration: i64,
    /// Idle timeout, seconds.
    pub idle_timeout: Option<i64>,
    /// Maintenance windows (none: any time).
    pub windows: Vec<Window>,
    /// Channel rules.
    pub channels: Channels,
    /// Secret rotation rules (`[rotation]`), if any.
    pub rotation: Option<crate::rotation::rules::Rules>,
}

/// Matches `name` against a glob with `*` and `?`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => rec(&p[1..], n) || (!n.is_empty() && rec(p, &n[1..])),
            (Some(b'?'), Some(_)) => rec(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => rec(&p[1..], &n[1..]),
            _ => false,
        }
    }
    rec(pattern.as_bytes(), name.as_bytes())
}

impl Policy {
    /// Whether this policy governs `t`: its name matches one of `targets`, or it carries all of
    /// `tags` (when tags are given).
    pub fn matches(&self, t: &Target) -> bool {
        let by_name = self.targets.iter().any(|g| glob_match(g, &t.name));
        let by_tags = !self.tags.is_empty()
            && self.tags.iter().all(|(k, v)| {
                let have = match k.as_str() {
                    "site" => t.site.as_deref(),
                    "zone" => t.zone.as_deref(),
                    "criticality" => t.criticality.as_deref(),
                    _ => None,
                };
                have == Some(v.as_str())
            });
        by_name || by_tags
    }
}

fn line_of(text: &str, span: std::ops::Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

fn at<T>(path: &Path, text: &str, s: &Spanned<T>, field: &str, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{}:{}: {field}: {msg}", path.display(), line_of(text, s.span()))
}

/// Parses one policy file; errors name the file, line and field.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<Policy> {
    let f: File = toml::from_str(text).map_err(|e| crate::config::located(path, text, &e))?;
    let role = |s: &Spanned<String>, field: &str| -> anyhow::Result<Role> {
        s.get_ref().parse::<Role>().map_err(|e| at(path, text, s, field, e))
    };
    let requesters = Who {
        users: f.request.users.clone(),
        orgs: f.request.orgs.clone(),
        roles: f.request.roles.iter().map(|r| role(r, "request.roles")).collect::<anyhow::Result<_>>()?,
    };
    let approvers = Who {
        users: f.approval.approvers.clone(),
        orgs: Vec::new(),
        roles: f
            .approval
            .approver_roles
            .iter()
            .map(|r| role(r, "approval.approver_roles"))
            .collect::<anyhow::Result<_>>()?,
    };
    if requesters == Who::default() {
        bail!("{}: [request] names nobody: give users, orgs or roles", path.display());
    }
    if approvers == Who::default() {
        bail!("{}: [approval] names nobody: give approvers or approver_roles", path.display());
    }
    let required = *f.approval.required.get_ref();
    if !(1..=10).contains(&required) {
        return Err(at(path, text, &f.approval.required, "approval.required", "must be between 1 and 10"));
    }
    let dur = |s: &Spanned<String>, field: &str| {
        crate::access::parse_duration(s.get_ref()).map_err(|e| at(path, text, s, field, e))
    };
    let max_duration = dur(&f.limits.max_duration, "limits.max_duration")?;
    let idle_timeout = f.limits.idle_timeout.as_ref().map(|s| dur(s, "limits.idle_timeout")).transpose()?;
    let mut windows = Vec::new();
    for w in &f.windows {
        let tz: chrono_tz::Tz = w.timezone.get_ref().parse().map_err(|_| {
            at(path, text, &w.timezone, "windows.timezone", format!("unknown time zone {:?}", w.timezone.get_ref()))
        })?;
        let win = match (&w.weekly, &w.from, &w.to) {
            (Some(spec), None, None) => {
                window::parse_weekly(spec.get_ref(), tz).map_err(|e| at(path, text, spec, "windows.weekly", e))?
            }
            (None, Some(from), Some(to)) => window::parse_once(from.get_ref(), to.get_ref(), tz)
                .map_err(|e| at(path, text, from, "windows.from", e))?,
            _ => {
                return Err(at(
                    path,
                    text,
                    &w.timezone,
                    "windows",
                    "give either weekly = \"…\" or from = \"…\" and to = \"…\"",
                ))
            }
        };
        windows.push(win);
    }
    let mut forward = Vec::new();
    for d in &f.channels.forward {
        crate::targets::parse_address(d.get_ref()).map_err(|e| at(path, text, d, "channels.forward", e))?;
        forward.push(d.get_ref().clone());
    }
    if f.matcher.targets.is_empty() && f.matcher.tags.is_empty() {
        bail!("{}: [match] matches nothing: give targets or tags", path.display());
    }
    for k in f.matcher.tags.keys() {
        if !["site", "zone", "criticality"].contains(&k.as_str()) {
            bail!("{}: match.tags: unknown tag {k:?} (site, zone or criticality)", path.display());
        }
    }
    let rotation = f.rotation.as_ref().map(|r| r.compile(path, text)).transpose()?;
    Ok(Policy {
        name: f.policy.name,
        description: f.policy.description,
        file: path.to_path_buf(),
        targets: f.matcher.targets,
        tags: f.matcher.tags,
        requesters,
        approvers,
        required: required as u32,
        max_duration,
        idle_timeout,
        windows,
        channels: Channels {
            shell: f.channels.shell,
            exec: f.channels.exec,
            sftp: f.channels.sftp,
            forward,
            rdp_clipboard: f.channels.rdp_clipboard,
            rdp_drive: f.channels.rdp_drive,
        },
        rotation,
    })
}

/// All policies, in file-name order.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// The policies.
    pub policies: Vec<Policy>,
}

impl PolicySet {
    /// Reads every `*.toml` in `dir`. Any bad file fails the whole load (so a reload keeps the
    /// previous set).
    pub fn load_dir(dir: &Path) -> anyhow::Result<PolicySet> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read policies folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut policies = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
            let p = parse(&f, &text)?;
            if let Some(other) = policies.iter().find(|q: &&Policy| q.name == p.name) {
                bail!("{}: policy name {:?} is already used by {}", f.display(), p.name, other.file.display());
            }
            policies.push(p);
        }
        Ok(PolicySet { policies })
    }

    /// The policy governing `t`.
    pub fn for_target(&self, t: &Target) -> Option<&Policy> {
        self.policies.iter().find(|p| p.matches(t))
    }
}

/// The live policy set, swapped whole on reload.
#[derive(Debug, Default)]
pub struct Policies(RwLock<Arc<PolicySet>>);

impl Policies {
    /// The current set.
    pub fn current(&self) -> Arc<PolicySet> {
        self.0.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Replaces the set.
    pub fn replace(&self, set: PolicySet) {
        if let Ok(mut g) = self.0.write() {
            *g = Arc::new(set);
        }
    }

    /// Reloads from `dir`; on error the old set stays and the error is returned.
    pub fn reload(&self, dir: &Path) -> anyhow::Result<usize> {
        let set = PolicySet::load_dir(dir)?;
        let n = set.policies.len();
        self.replace(set);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("plc-*", "plc-line3"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("hmi-?", "hmi-1"));
        assert!(!glob_match("plc-*", "hmi-1"));
        assert!(glob_match("historian*", "historian"));
    }

    #[test]
    fn shipped_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let set = PolicySet::load_dir(&dir).unwrap();
        assert_eq!(set.policies.len(), 3);
        let sc = &set.policies[0];
        assert_eq!(sc.required, 2);
        assert_eq!(sc.max_duration, 4 * 3600);
        assert_eq!(sc.windows.len(), 1);
        assert!(!sc.channels.sftp);
    }

    #[test]
    fn errors_name_file_line_field() {
        let text = "[policy]\nname = \"x\"\n[match]\ntargets = [\"a\"]\n[request]\nroles = [\"vendor\"]\n[approval]\napprover_roles = [\"manager\"]\nrequired = 2\n[limits]\nmax_duration = \"4q\"\n";
        let e = parse(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:11: limits.max_duration:"), "{e}");
        let text2 = text.replace("4q", "4h").replace("\"vendor\"", "\"boss\"");
        let e = parse(Path::new("p.toml"), &text2).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:6: request.roles:"), "{e}");
        let text3 =
            text.replace("4q", "4h") + "[[windows]]\nweekly = \"Sat 22:00 Sun 06:00\"\ntimezone = \"Europe/Berlin\"\n";
        let e = parse(Path::new("p.toml"), &text3).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:13: windows.weekly:"), "{e}");
        let text4 = text.replace("4q", "4h").replace("required = 2", "required = 2\nquorum = 1");
        let e = parse(Path::new("p.toml"), &text4).unwrap_err().to_string();
        assert!(e.contains("p.toml:10") && e.contains("quorum"), "{e}");
    }

    #[test]
    fn rotation_section() {
        let base = "[policy]\nname = \"x\"\n[match]\ntargets = [\"a\"]\n[request]\nroles = [\"vendor\"]\n[approval]\napprover_roles = [\"manager\"]\nrequired = 1\n[limits]\nmax_duration = \"4h\"\n";
        let ok = format!("{base}[rotation]\nafter_session = true\nmax_age = \"30d\"\npassword = {{ length = 24, alphabet = \"symbols\" }}\n");
        let p = parse(Path::new("p.toml"), &ok).unwrap();
        let r = p.rotation.unwrap();
        assert!(r.after_session);
        assert_eq!(r.max_age, Some(30 * 86400));
        assert_eq!(r.password.length, 24);
        let bad_key = format!("{base}[rotation]\nafter_sesion = true\n");
        let e = parse(Path::new("p.toml"), &bad_key).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:13") && e.contains("after_sesion") && !e.contains('\n'), "{e}");
        let bad_alpha = format!("{base}[rotation]\npassword = {{ length = 20, alphabet = \"emoji\" }}\n");
        let e = parse(Path::new("p.toml"), &bad_alpha).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:13: rotation.password.alphabet"), "{e}");
        let admin = format!("{base}[rotation]\nadmin = \"{{target}}-admin\"\n");
        let r = parse(Path::new("p.toml"), &admin).unwrap().rotation.unwrap().admin.unwrap();
        assert_eq!(r.target_for("plc1"), "plc1-admin");
        assert_eq!(r.command, crate::rotation::rules::DEFAULT_ADMIN_COMMAND);
        let orphan = format!("{base}[rotation]\ncommand = \"chpasswd\"\n");
        let e = parse(Path::new("p.toml"), &orphan).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:13: rotation.command: give rotation.admin"), "{e}");
        let bad_age = format!("{base}[rotation]\nmax_age = \"often\"\n");
        let e = parse(Path::new("p.toml"), &bad_age).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:13: rotation.max_age"), "{e}");
    }
}
