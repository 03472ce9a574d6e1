//! `gapless provider list | show | check | add | remove`: providers built into gapless and
//! providers described by definition files in `<data-dir>/providers/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use gapless_core::{AuditAction, AuditRecord, Caller};
use gapless_providers::declarative::{
    check::{Problem, check},
    definition::{AuthKind, Definition},
};
use gapless_store::Store;

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Built-in providers and the definitions in the providers directory.
    List,
    /// What a provider is: its authorization, streams, lookback and limits.
    Show { name: String },
    /// Check a definition file without the network: every problem with its line and a hint.
    Check { file: PathBuf },
    /// Check a definition file and add it to the providers directory.
    Add { file: PathBuf },
    /// Replace a definition in use with a new version of it: checked, then swapped in.
    /// Refused when its authorization kind changes or a stream that a pipeline reads
    /// disappears or changes its fields (the pipelines are named).
    Update { file: PathBuf },
    /// Remove a definition (refused while identities use it).
    Remove { name: String },
}

/// Write `text` to `target` through a temporary file and a rename: a reader sees the old
/// file or the new one, never half of one.
fn replace_file(dir: &Path, name: &str, target: &Path, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.toml.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, target).with_context(|| format!("writing {}", target.display()))
}

/// Why `new` cannot replace `old` for the pipelines that use the provider: one line each.
async fn incompatibilities(
    store: &Store,
    name: &str,
    old: &Definition,
    new: &Definition,
) -> Result<Vec<String>> {
    use gapless_providers::declarative::connector::descriptor;
    let mut out = Vec::new();
    if old.auth.kind.get_ref() != new.auth.kind.get_ref() {
        out.push(format!(
            "the authorization changes from {} to {}: the stored credentials would not fit",
            auth_name(*old.auth.kind.get_ref()),
            auth_name(*new.auth.kind.get_ref())
        ));
    }
    let (old, new) = (descriptor(old), descriptor(new));
    let users: std::collections::HashSet<gapless_core::IdentityId> = store
        .list_identities()
        .await?
        .into_iter()
        .filter(|i| i.provider == name)
        .map(|i| i.id)
        .collect();
    for pipeline in store.list_pipelines().await? {
        if !users.contains(&pipeline.source_identity) {
            continue;
        }
        for stream in &pipeline.streams {
            let before = old.stream(stream).map(|s| &s.schema);
            match new.stream(stream).map(|s| &s.schema) {
                None => out.push(format!(
                    "pipeline {} reads stream {stream}, which the new definition does not have",
                    pipeline.name
                )),
                Some(after) if Some(after) != before => out.push(format!(
                    "pipeline {} reads stream {stream}, whose fields or primary key change (its loaded windows would not match)",
                    pipeline.name
                )),
                Some(_) => {}
            }
        }
    }
    Ok(out)
}

/// Where definition files live.
pub fn providers_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("providers")
}

fn read(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

fn report(file: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}:{p}", file.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Check `file`: its text and definition, or an error listing every problem.
fn checked(file: &Path) -> Result<(String, Definition)> {
    let text = read(file)?;
    let definition = check(&text).map_err(|problems| {
        anyhow::anyhow!(
            "{}\n{} problem(s); nothing was loaded",
            report(file, &problems),
            problems.len()
        )
    })?;
    Ok((text, definition))
}

/// The definitions in the providers directory, by file.
fn installed(dir: &Path) -> Result<Vec<(PathBuf, Definition)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for file in files {
        let (_, definition) = checked(&file)?;
        let name = definition.provider.name.get_ref();
        if let Some((other, _)) = out
            .iter()
            .find(|(_, d): &&(PathBuf, Definition)| d.provider.name.get_ref() == name)
        {
            bail!(
                "{} and {} both define provider {name}; remove one",
                other.display(),
                file.display()
            );
        }
        out.push((file, definition));
    }
    Ok(out)
}

/// The checked definitions gapless runs, by provider name: the built-in ones, each replaced
/// by a file of the same name in the providers directory. A file with a problem stops
/// everything: a bad definition is never half-loaded.
pub fn definitions(data_dir: &Path) -> Result<std::collections::BTreeMap<String, Definition>> {
    Ok(known(&providers_dir(data_dir))?
        .into_iter()
        .map(|(name, (_, d))| (name, d))
        .collect())
}

/// Where a definition in use comes from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Shipped inside gapless.
    BuiltIn,
    /// A file in the providers directory; `replaces_built_in` when it has a built-in's name.
    File {
        path: PathBuf,
        replaces_built_in: bool,
    },
}

/// The built-in definitions and the providers directory's, by name, with where each comes
/// from; a file replaces the built-in definition of its name.
fn known(dir: &Path) -> Result<std::collections::BTreeMap<String, (Origin, Definition)>> {
    let mut out: std::collections::BTreeMap<String, (Origin, Definition)> =
        gapless_providers::declarative::builtin::definitions()?
            .into_iter()
            .map(|(name, d)| (name.to_string(), (Origin::BuiltIn, d)))
            .collect();
    for (path, d) in installed(dir)? {
        let name = d.provider.name.get_ref().clone();
        let replaces_built_in = out.contains_key(&name);
        out.insert(
            name,
            (
                Origin::File {
                    path,
                    replaces_built_in,
                },
                d,
            ),
        );
    }
    Ok(out)
}

/// The built-in definition named `name`, checked.
fn built_in(name: &str) -> Result<Option<Definition>> {
    Ok(gapless_providers::declarative::builtin::definitions()?
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| d))
}

/// Whether `name` is a built-in definition (one a file may replace).
pub fn is_built_in_definition(name: &str) -> bool {
    gapless_providers::declarative::builtin::text(name).is_some()
}

fn auth_name(kind: AuthKind) -> &'static str {
    match kind {
        AuthKind::Oauth2 => "oauth2 (authorization code)",
        AuthKind::Oauth2ClientCredentials => "oauth2 client credentials",
        AuthKind::ApiKey => "api key",
        AuthKind::Basic => "basic",
    }
}

/// Record a change of a definition in the audit log, with the SHA-256 of the file's text
/// (what was added, or what was removed), when the state store is open.
async fn record(store: Option<&Store>, action: AuditAction, name: &str, text: &str) -> Result<()> {
    use sha2::Digest;
    let Some(store) = store else {
        return Ok(());
    };
    let audit = AuditRecord::new(
        chrono::Utc::now(),
        &Caller::new(crate::cli_actor()),
        action,
        name,
    )
    .with(
        "definition_sha256",
        hex::encode(sha2::Sha256::digest(text.as_bytes())),
    );
    store.audit(&audit).await?;
    Ok(())
}

pub async fn run(data_dir: &Path, store: Option<&Store>, command: ProviderCommand) -> Result<()> {
    match command {
        ProviderCommand::Check { file } => check_file(file).await?,
        ProviderCommand::Add { file } => add(data_dir, store, file).await?,
        ProviderCommand::Update { file } => update(data_dir, store, file).await?,
        ProviderCommand::Remove { name } => remove(data_dir, store, name).await?,
        ProviderCommand::List => list(data_dir).await?,
        ProviderCommand::Show { name } => show(data_dir, name).await?,
    }
    Ok(())
}

/// `gapless provider check`.
async fn check_file(file: PathBuf) -> Result<()> {
    let (_, d) = checked(&file)?;
    say!(
        "{}: ok — provider {} ({}), {}, {} stream(s)",
        file.display(),
        d.provider.name.get_ref(),
        d.provider.display_name,
        auth_name(*d.auth.kind.get_ref()),
        d.streams.len()
    );
    Ok(())
}

/// `gapless provider add`.
async fn add(data_dir: &Path, store: Option<&Store>, file: PathBuf) -> Result<()> {
    let dir = providers_dir(data_dir);
    let (text, d) = checked(&file)?;
    let name = d.provider.name.get_ref().clone();
    if gapless_providers::registry::SOURCES.contains(&name.as_str()) {
        bail!("{name} is a built-in provider; give the definition another name");
    }
    let target = dir.join(format!("{name}.toml"));
    if target.exists() {
        bail!(
            "a provider named {name} is already defined ({}); remove it first",
            target.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if installed(&dir)?
        .iter()
        .any(|(_, other)| other.provider.name.get_ref() == &name)
    {
        bail!("a provider named {name} is already defined; remove it first");
    }
    // A file replacing a built-in definition must fit the pipelines that read it.
    if let (Some(store), Some(built_in)) = (store, built_in(&name)?) {
        let problems = incompatibilities(store, &name, &built_in, &d).await?;
        if !problems.is_empty() {
            bail!(
                "provider {name} was not added (it would replace the built-in definition):\n  {}",
                problems.join("\n  ")
            );
        }
    }
    replace_file(&dir, &name, &target, &text)?;
    record(store, AuditAction::ProviderAdded, &name, &text).await?;
    if is_built_in_definition(&name) {
        say!(
            "provider {name} added ({}); it replaces the built-in definition of {name} until removed",
            target.display()
        );
    } else {
        say!("provider {name} added ({})", target.display());
    }
    Ok(())
}

/// `gapless provider update`.
async fn update(data_dir: &Path, store: Option<&Store>, file: PathBuf) -> Result<()> {
    let dir = providers_dir(data_dir);
    let (text, new) = checked(&file)?;
    let name = new.provider.name.get_ref().clone();
    let Some((target, old)) = installed(&dir)?
        .into_iter()
        .find(|(_, d)| d.provider.name.get_ref() == &name)
    else {
        bail!(
            "no definition of a provider named {name:?} in {}; add it with `gapless provider add`",
            dir.display()
        );
    };
    if let Some(store) = store {
        let problems = incompatibilities(store, &name, &old, &new).await?;
        if !problems.is_empty() {
            bail!(
                "provider {name} was not updated:\n  {}",
                problems.join("\n  ")
            );
        }
    }
    replace_file(&dir, &name, &target, &text)?;
    record(store, AuditAction::ProviderUpdated, &name, &text).await?;
    say!(
        "provider {name} updated ({}); running `gapless run` or `gapless serve` processes use it once restarted",
        target.display()
    );
    Ok(())
}

/// `gapless provider remove`.
async fn remove(data_dir: &Path, store: Option<&Store>, name: String) -> Result<()> {
    let dir = providers_dir(data_dir);
    // By the name inside the files, never a path built from the argument.
    let Some((target, current)) = installed(&dir)?
        .into_iter()
        .find(|(_, d)| d.provider.name.get_ref() == &name)
    else {
        bail!(
            "no definition of a provider named {name:?} in {}",
            dir.display()
        );
    };
    // The built-in definition takes over again: it must fit the pipelines.
    if let (Some(store), Some(built_in)) = (store, built_in(&name)?) {
        let problems = incompatibilities(store, &name, &current, &built_in).await?;
        if !problems.is_empty() {
            bail!(
                "provider {name} was not removed (the built-in definition would take over):\n  {}",
                problems.join("\n  ")
            );
        }
    }
    // Identities of a replaced built-in provider go back to the built-in definition.
    if let Some(store) = store.filter(|_| !is_built_in_definition(&name)) {
        let users: Vec<String> = store
            .list_identities()
            .await?
            .into_iter()
            .filter(|i| i.provider == name)
            .map(|i| i.label)
            .collect();
        if !users.is_empty() {
            bail!(
                "provider {name} is used by identities {}; delete or move them first",
                users.join(", ")
            );
        }
    }
    let text = std::fs::read_to_string(&target).unwrap_or_default();
    std::fs::remove_file(&target).with_context(|| format!("removing {}", target.display()))?;
    record(store, AuditAction::ProviderRemoved, &name, &text).await?;
    if is_built_in_definition(&name) {
        say!("provider {name} removed; the built-in definition of {name} is used again");
    } else {
        say!("provider {name} removed");
    }
    Ok(())
}

/// `gapless provider list`.
async fn list(data_dir: &Path) -> Result<()> {
    let dir = providers_dir(data_dir);
    for name in gapless_providers::registry::SOURCES {
        say!("{name:<24} built in");
    }
    for (name, (origin, d)) in known(&dir)? {
        let from = match origin {
            Origin::BuiltIn => "built in".to_string(),
            Origin::File {
                path,
                replaces_built_in: true,
            } => format!("defined in {} (replaces the built-in one)", path.display()),
            Origin::File { path, .. } => format!("defined in {}", path.display()),
        };
        say!(
            "{name:<24} {from} ({}, {} stream(s))",
            auth_name(*d.auth.kind.get_ref()),
            d.streams.len()
        );
    }
    Ok(())
}

/// `gapless provider show`: every part of a definition a person configures against, one
/// line or table each, in the order of the file (long as the format is: it only prints).
async fn show(data_dir: &Path, name: String) -> Result<()> {
    let dir = providers_dir(data_dir);
    let Some((origin, d)) = known(&dir)?.remove(&name) else {
        if gapless_providers::registry::SOURCES.contains(&name.as_str()) {
            say!("{name}: built in; see `gapless identity add --provider {name}`");
            return Ok(());
        }
        bail!("no provider named {name}; `gapless provider list` shows them");
    };
    say!(
        "{} ({})",
        d.provider.display_name,
        d.provider.name.get_ref()
    );
    match origin {
        Origin::BuiltIn => say!(
            "  built in     see docs/providers/{name}.md; a file named {name}.toml in {} replaces it",
            dir.display()
        ),
        Origin::File { path, .. } => say!("  defined in   {}", path.display()),
    }
    match &d.provider.region {
        Some(own) => {
            say!(
                "  base URL     {} (region {own}, the default)",
                d.provider.base_url.get_ref()
            );
            for (region, r) in &d.regions {
                say!(
                    "  region {:<6}{}: {} (region = \"{region}\" in [providers.{name}], or identity add --region {region})",
                    region,
                    r.description,
                    r.base_url.get_ref()
                );
            }
        }
        None => say!("  base URL     {}", d.provider.base_url.get_ref()),
    }
    say!("  auth         {}", auth_name(*d.auth.kind.get_ref()));
    if !d.auth.scopes.is_empty() {
        say!("  scopes       {}", d.auth.scopes.join(", "));
    }
    say!("  probe        {}", d.probe.request.url.get_ref());
    let lifetimes = &d.auth.lifetimes;
    let lifetime = |l: &Option<toml::Spanned<String>>| {
        l.as_ref()
            .map_or("as the provider says", |l| l.get_ref().as_str())
            .to_string()
    };
    if matches!(
        d.auth.kind.get_ref(),
        gapless_providers::declarative::definition::AuthKind::Oauth2
            | gapless_providers::declarative::definition::AuthKind::Oauth2ClientCredentials
    ) {
        say!(
            "  lifetimes    access {}, refresh {}, authorization {}",
            lifetime(&lifetimes.access),
            lifetime(&lifetimes.refresh),
            lifetimes
                .authorization
                .as_ref()
                .map_or("unlimited", |l| l.get_ref().as_str())
        );
    }
    for (key, setting) in &d.settings {
        let given = if setting.per_identity {
            format!("identity add --setting {key}=…")
        } else {
            format!(
                "[providers.{}.settings] {key}{}",
                d.provider.name.get_ref(),
                if setting.secret { "_env or _file" } else { "" }
            )
        };
        say!(
            "  setting {:<15} {}{}{}: {} ({given})",
            key,
            match (&setting.default, setting.required) {
                (Some(default), _) => format!("default {default:?}"),
                (None, true) => "required".into(),
                (None, false) => "optional".into(),
            },
            if setting.secret { ", secret" } else { "" },
            if setting.per_identity {
                ", per identity"
            } else {
                ""
            },
            setting.description,
        );
    }
    say!(
        "  error rules  {}{}",
        d.errors.len(),
        d.provider
            .classifier
            .map(|c| format!(", then the built-in table {c:?}"))
            .unwrap_or_default()
    );
    for s in &d.streams {
        say!(
            "  stream {:<16} {} field(s), lookback {}, max range {}, settle {} window(s)",
            s.name.get_ref(),
            s.fields.len(),
            s.lookback
                .as_ref()
                .map_or("unlimited", |l| l.get_ref().as_str()),
            s.max_range
                .as_ref()
                .map_or("one window", |l| l.get_ref().as_str()),
            s.settle_windows
        );
    }
    if let Some(limit) = &d.limits.requests {
        say!("  budget       {} per upstream account", limit.get_ref());
    }
    Ok(())
}
