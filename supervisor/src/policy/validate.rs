//! [`PolicyFile`] → [`Policy`]: every value checked, every error placed in the file.

mod credentials;
mod l7;
mod transparent;

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde_saphyr::Spanned;

use super::file::{
    CompatibilityFile, EndpointFile, FilesystemFile, NetworkRuleFile, PrincipalFile, ProcessFile,
};
use super::{
    BUILTIN_DEFAULT, Cidr, Compatibility, Endpoint, Filesystem, HostPattern, NetworkRule, PathGlob,
    Policy, PolicyError, PolicyFile, PolicyOrigin, Position, Principal, Reach, RunAs,
};

/// Upstream's limit on one path.
const MAX_PATH_CHARS: usize = 4096;
/// Upstream's limit on `read_only` + `read_write` together.
const MAX_PATHS: usize = 256;
/// Bounds on the network section, so a generated policy cannot make every decision slow.
const MAX_RULES: usize = 1024;
const MAX_ENDPOINTS: usize = 4096;
const MAX_BINARIES: usize = 4096;

/// Checks every value of `file` and builds the [`Policy`] that later steps enforce.
pub fn validate(
    file: PolicyFile,
    origin: PolicyOrigin,
    workdir: &Path,
) -> Result<Policy, PolicyError> {
    let v = Validator { origin };
    if file.version.value != 1 {
        return Err(v.err(
            &file.version,
            "version",
            format!(
                "version {} is not supported; this build reads version 1",
                file.version.value
            ),
        ));
    }
    if let Some(middlewares) = &file.network_middlewares {
        return Err(v.err(
            middlewares,
            "network_middlewares",
            "L7 middlewares are not supported by this version of openshell-sandbox",
        ));
    }
    let mut notes = Vec::new();
    let filesystem = match file.filesystem_policy {
        Some(fs) => v.filesystem(fs, workdir, &mut notes)?,
        None => {
            notes.push(
                "no filesystem_policy: using the built-in default's paths \
                 (system directories read-only, the workdir read-write, /tmp private)"
                    .to_owned(),
            );
            builtin_filesystem(workdir, &mut notes)?
        }
    };
    let compatibility = match file.landlock.and_then(|l| l.compatibility) {
        Some(CompatibilityFile::BestEffort) => Compatibility::BestEffort,
        Some(CompatibilityFile::HardRequirement) | None => Compatibility::HardRequirement,
    };
    let run_as = match file.process {
        Some(process) => v.process(process)?,
        None => RunAs::default(),
    };
    let mut section = v.credentials(file.credentials.as_ref())?;
    let mut network = Vec::new();
    let rules = file.network_policies.unwrap_or_default();
    if rules.len() > MAX_RULES {
        return Err(v.plain(
            "network_policies",
            format!("{} rules; the limit is {MAX_RULES}", rules.len()),
        ));
    }
    let (mut endpoints, mut binaries) = (0, 0);
    let mut positions = Vec::new();
    for (key, rule) in rules {
        positions.extend(rule.value.endpoints.iter().enumerate().map(|(i, e)| {
            (
                format!("network_policies.{key}.endpoints[{i}]"),
                Position::of(&e.referenced),
            )
        }));
        let rule = v.rule(&key, rule, &mut section, &mut notes)?;
        writable_binaries(&rule, &filesystem, &mut notes);
        endpoints += rule.endpoints.len();
        binaries += rule.binaries.len();
        network.push(rule);
    }
    let placed: Vec<_> = positions
        .into_iter()
        .zip(network.iter().flat_map(|r| &r.endpoints))
        .map(|((field, position), endpoint)| (field, position, endpoint))
        .collect();
    if let Some((field, position, message)) = l7::conflicts(&placed) {
        return Err(PolicyError::Invalid {
            origin: v.origin,
            position,
            field,
            message,
        });
    }
    v.bind_credentials(&section, &placed)?;
    if endpoints > MAX_ENDPOINTS || binaries > MAX_BINARIES {
        return Err(v.plain(
            "network_policies",
            format!(
                "{endpoints} endpoints and {binaries} binaries in all; the limits are \
                 {MAX_ENDPOINTS} and {MAX_BINARIES}"
            ),
        ));
    }
    Ok(Policy {
        origin: v.origin,
        filesystem,
        compatibility,
        run_as,
        network,
        credentials: section.credentials,
        notes,
    })
}

/// A binary the agent can write is whatever the agent puts there first: the pin taken on first
/// use then vouches for the agent's own file. Worth saying, not refusing (a tool installed in
/// the workdir is a real need).
fn writable_binaries(rule: &NetworkRule, filesystem: &Filesystem, notes: &mut Vec<String>) {
    for binary in &rule.binaries {
        let pattern = binary.to_string();
        let prefix: &str = pattern.split('*').next().unwrap_or("");
        let writable = filesystem
            .read_write
            .iter()
            .find(|dir| Path::new(prefix).starts_with(dir) || dir.starts_with(prefix));
        if let Some(dir) = writable {
            notes.push(format!(
                "network rule {:?}: binary {pattern} lies under the read-write path {}, so the \
                 agent can put its own program there, and the first one to connect is pinned",
                rule.key,
                dir.display()
            ));
        }
    }
}

/// The built-in default's filesystem section, for policies that only configure the network.
fn builtin_filesystem(workdir: &Path, notes: &mut Vec<String>) -> Result<Filesystem, PolicyError> {
    let origin = PolicyOrigin::BuiltinDefault;
    let default = super::parse(BUILTIN_DEFAULT, &origin)?;
    let v = Validator { origin };
    match default.filesystem_policy {
        Some(fs) => v.filesystem(fs, workdir, notes),
        None => Ok(Filesystem::default()),
    }
}

struct Validator {
    origin: PolicyOrigin,
}

impl Validator {
    fn err<T>(
        &self,
        at: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Invalid {
            origin: self.origin.clone(),
            position: Position::of(&at.referenced),
            field: field.into(),
            message: message.into(),
        }
    }

    fn plain(&self, field: impl Into<String>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            origin: self.origin.clone(),
            position: None,
            field: field.into(),
            message: message.into(),
        }
    }

    fn filesystem(
        &self,
        fs: FilesystemFile,
        workdir: &Path,
        notes: &mut Vec<String>,
    ) -> Result<Filesystem, PolicyError> {
        let total = fs.read_only.len() + fs.read_write.len();
        if total > MAX_PATHS {
            return Err(self.plain(
                "filesystem_policy",
                format!("{total} paths; the limit is {MAX_PATHS}"),
            ));
        }
        let mut read_only = Vec::new();
        for (i, raw) in fs.read_only.iter().enumerate() {
            let field = format!("filesystem_policy.read_only[{i}]");
            read_only.push(check_path(&raw.value, false).map_err(|m| self.err(raw, field, m))?);
        }
        let mut read_write = Vec::new();
        for (i, raw) in fs.read_write.iter().enumerate() {
            let field = format!("filesystem_policy.read_write[{i}]");
            let path = check_path(&raw.value, true).map_err(|m| self.err(raw, &field, m))?;
            if read_only.contains(&path) {
                return Err(self.err(
                    raw,
                    field,
                    format!(
                        "{} is also listed in read_only; list each path once",
                        path.display()
                    ),
                ));
            }
            read_write.push(path);
        }
        match (
            fs.include_workdir,
            check_path(&workdir.to_string_lossy(), true),
        ) {
            (Some(false), _) => {}
            (_, Ok(path)) => {
                if !read_write.contains(&path) {
                    read_write.push(path);
                }
            }
            (Some(true), Err(why)) => {
                return Err(self.plain(
                    "filesystem_policy.include_workdir",
                    format!(
                        "the workdir cannot be made read-write: {why}; pass --workdir DIR \
                         or set include_workdir: false"
                    ),
                ));
            }
            (None, Err(why)) => notes.push(format!(
                "workdir not added to read_write ({why}); pass --workdir DIR to give the \
                 agent a writable working directory"
            )),
        }
        Ok(Filesystem {
            read_only: dedup(read_only),
            read_write: dedup(read_write),
        })
    }

    fn process(&self, process: ProcessFile) -> Result<RunAs, PolicyError> {
        let principal = |raw: Option<Spanned<PrincipalFile>>, field: &str| {
            raw.map(|raw| principal(&raw.value).map_err(|m| self.err(&raw, field, m)))
                .transpose()
        };
        Ok(RunAs {
            user: principal(process.run_as_user, "process.run_as_user")?,
            group: principal(process.run_as_group, "process.run_as_group")?,
        })
    }

    fn rule(
        &self,
        key: &str,
        rule: Spanned<NetworkRuleFile>,
        credentials: &mut credentials::Section,
        notes: &mut Vec<String>,
    ) -> Result<NetworkRule, PolicyError> {
        let base = format!("network_policies.{key}");
        let file = rule.value;
        let mut endpoints = Vec::new();
        for (i, endpoint) in file.endpoints.iter().enumerate() {
            let base = format!("{base}.endpoints[{i}]");
            endpoints.push(self.endpoint(endpoint, &base, credentials)?);
        }
        let mut binaries = Vec::new();
        for (i, binary) in file.binaries.iter().enumerate() {
            let field = format!("{base}.binaries[{i}].path");
            binaries.push(
                PathGlob::parse(&binary.path.value)
                    .map_err(|m| self.err(&binary.path, field, m))?,
            );
        }
        let name = file.name.unwrap_or_else(|| key.to_owned());
        for (i, e) in endpoints.iter_mut().enumerate() {
            let Some(l7) = e.l7.as_mut() else { continue };
            l7.policy = name.clone();
            if !l7.enforcement_written {
                notes.push(format!(
                    "network rule {key:?} endpoint {i} ({}): no enforcement written, so its L7 \
                     rules are enforced (upstream would only audit); write enforcement: audit \
                     to log without blocking",
                    e.host
                ));
            }
        }
        if endpoints.is_empty() {
            notes.push(format!(
                "network rule {key:?} lists no endpoints, so it allows nothing"
            ));
        } else if binaries.is_empty() {
            notes.push(format!(
                "network rule {key:?} lists no binaries, so it allows nothing \
                 (a rule matches only the executables it names; use path: \"/**\" for any)"
            ));
        }
        Ok(NetworkRule {
            key: key.to_owned(),
            name,
            endpoints,
            binaries,
        })
    }

    fn endpoint(
        &self,
        raw: &Spanned<EndpointFile>,
        base: &str,
        section: &mut credentials::Section,
    ) -> Result<Endpoint, PolicyError> {
        let e = &raw.value;
        let reach = self.reach(raw, base)?;
        // A protocol: tcp endpoint is never inspected; every other one may be.
        let mut l7 = match reach {
            Reach::Transparent => None,
            Reach::Any => self.l7(raw, base)?,
        };
        let credentials = self.endpoint_credentials(raw, base, l7.as_ref(), section)?;
        if let Some(l7) = l7.as_mut() {
            l7.credentials = credentials.binding;
            l7.body_credentials = credentials.body;
            l7.websocket_credentials = credentials.websocket;
        }
        let host = HostPattern::parse(&e.host.value)
            .map_err(|m| self.err(&e.host, format!("{base}.host"), m))?;
        let ports = self.ports(raw, base, e.port.as_ref(), e.ports.as_deref())?;
        let mut allowed_ips = Vec::new();
        for (i, cidr) in e.allowed_ips.iter().enumerate() {
            allowed_ips.push(
                Cidr::parse(&cidr.value)
                    .map_err(|m| self.err(cidr, format!("{base}.allowed_ips[{i}]"), m))?,
            );
        }
        Ok(Endpoint {
            host,
            ports,
            allowed_ips,
            l7,
            reach,
            allow_uninspected_credentials: credentials.allow_uninspected,
        })
    }

    /// `port` and `ports` of the entry `raw` at `base`: each in range, at least one.
    fn ports<T>(
        &self,
        raw: &Spanned<T>,
        base: &str,
        port: Option<&Spanned<i64>>,
        ports: Option<&[Spanned<i64>]>,
    ) -> Result<Vec<u16>, PolicyError> {
        let mut out = Vec::new();
        let listed = port.into_iter().map(|p| (p, format!("{base}.port")));
        let many = ports.into_iter().flatten().enumerate();
        for (raw, field) in listed.chain(many.map(|(i, p)| (p, format!("{base}.ports[{i}]")))) {
            let port = u16::try_from(raw.value)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    self.err(raw, field, format!("port {} is not in 1-65535", raw.value))
                })?;
            if !out.contains(&port) {
                out.push(port);
            }
        }
        if out.is_empty() {
            return Err(self.err(raw, base, "an endpoint needs `port` or `ports`"));
        }
        Ok(out)
    }
}

/// Normalises one filesystem path, or says why it is refused.
fn check_path(raw: &str, writable: bool) -> Result<PathBuf, String> {
    if raw.chars().count() > MAX_PATH_CHARS {
        return Err(format!("path is longer than {MAX_PATH_CHARS} characters"));
    }
    if raw.contains('\0') {
        return Err("path contains a NUL byte".to_owned());
    }
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(format!("{raw:?} is not an absolute path"));
    }
    let mut clean = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "{raw:?} contains `..`; write the path it stands for"
                ));
            }
            Component::Normal(part) => clean.push(part),
            Component::Prefix(_) => return Err(format!("{raw:?} is not a Linux path")),
        }
    }
    if writable && clean == Path::new("/") {
        return Err("\"/\" cannot be read-write; list the directories the agent needs".to_owned());
    }
    Ok(clean)
}

fn principal(raw: &PrincipalFile) -> Result<Principal, String> {
    let number = match raw {
        PrincipalFile::Number(n) => Some(*n),
        PrincipalFile::Name(name) => name.parse::<i64>().ok(),
    };
    if let Some(n) = number {
        return match u32::try_from(n) {
            Ok(0) => Err("0 (root) is refused; the agent never runs as root".to_owned()),
            Ok(id) if id != u32::MAX => Ok(Principal::Id(id)),
            _ => Err(format!("{n} is not an id in 1-4294967294")),
        };
    }
    match raw {
        PrincipalFile::Name(name) if name == "root" => {
            Err("root is refused; the agent never runs as root".to_owned())
        }
        PrincipalFile::Name(name) if valid_name(name) => Ok(Principal::Name(name.clone())),
        _ => Err(
            "expected a user or group name (letters, digits, '.', '_', '-') or a number".to_owned(),
        ),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'$'))
}

fn dedup(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    paths
        .into_iter()
        .filter(|p| seen.insert(p.clone()))
        .collect()
}
