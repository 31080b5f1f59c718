//! Schedule definitions: one TOML file per schedule in `jobs/`, parsed strictly and checked
//! once, with every problem reported as `FILE: field: problem`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SchedulerConfig;
use crate::domain::cron::{CatchUp, CronSchedule};

/// A schedule file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDef {
    /// Unique name; runs, files taken and the watermark are recorded under it.
    pub name: String,
    /// 5-field crontab or a macro (`@hourly`, `@daily`, `@weekly`, `@monthly`).
    pub schedule: String,
    /// IANA zone the crontab is read in (UTC by default).
    #[serde(default = "utc")]
    pub timezone: String,
    /// The tenant the jobs belong to (and whose budgets they count against).
    pub tenant: String,
    /// Model alias for jobs that name none.
    #[serde(default)]
    pub model: Option<String>,
    /// `auto`, `cheap` or `batch` for jobs that name none.
    #[serde(default)]
    pub route: Option<String>,
    /// A duration from the fire time, e.g. `24h`, for jobs that name none.
    #[serde(default)]
    pub deadline: Option<String>,
    /// Where each job's webhook goes, for jobs that name none.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Tags added to every job (a job's own tags win).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// What to do with ticks missed while no scheduler ran.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// A disabled schedule is listed and validated but never fires.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where the jobs come from.
    pub source: SourceDef,
}

fn utc() -> String {
    "UTC".into()
}

fn yes() -> bool {
    true
}

/// Where a run's jobs come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceDef {
    /// Files of jobs (sluice's job format or OpenAI batch input lines); each file is taken once.
    Jsonl(JsonlSource),
    /// Rows of a query, each filling a prompt template.
    Sql(SqlSource),
}

/// `[source.jsonl]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSource {
    /// A file or a glob, relative to the schedule file's folder unless absolute.
    pub path: String,
}

/// `[source.sql]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSource {
    /// A database named in `[scheduler.databases]`.
    pub database: String,
    /// A SELECT; its columns fill `{column}` placeholders in `template`.
    pub query: String,
    /// The prompt, with `{column}` placeholders.
    pub template: String,
    /// An optional system message, with the same placeholders.
    #[serde(default)]
    pub system: Option<String>,
    /// The column whose value becomes the job's `custom_id`.
    pub key: String,
    /// A column that only grows (a time or a serial): each run takes rows past the last value.
    #[serde(default)]
    pub watermark: Option<String>,
    /// The most rows one run takes (the rest wait for the next run when a watermark is set).
    #[serde(default)]
    pub max_rows: Option<u32>,
}

/// A checked schedule, ready to fire.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The definition as written.
    pub def: ScheduleDef,
    /// The parsed crontab in its zone.
    pub cron: CronSchedule,
    /// The file it came from.
    pub file: PathBuf,
}

impl Schedule {
    /// The folder relative source paths are read from.
    pub fn base_dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }
}

/// One problem with one schedule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefError {
    /// The file.
    pub file: PathBuf,
    /// The field at fault (`source.sql.key`), or `file` when the file itself is at fault.
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl std::fmt::Display for DefError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.field,
            self.problem
        )
    }
}

/// Every schedule in `dir` that checks out, and every problem with the others. A missing
/// folder holds no schedules; an unreadable one is a problem.
pub fn load_dir(dir: &Path, config: &SchedulerConfig) -> (Vec<Schedule>, Vec<DefError>) {
    let mut schedules: Vec<Schedule> = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (schedules, errors),
        Err(e) => {
            errors.push(DefError {
                file: dir.to_path_buf(),
                field: "file".into(),
                problem: format!("cannot read the folder: {e}"),
            });
            return (schedules, errors);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    for file in files {
        match load_file(&file, config) {
            Ok(s) => {
                if let Some(first) = schedules.iter().find(|o| o.def.name == s.def.name) {
                    errors.push(DefError {
                        file: file.clone(),
                        field: "name".into(),
                        problem: format!(
                            "`{}` is already the name of {}; names must be unique",
                            s.def.name,
                            first.file.display()
                        ),
                    });
                } else {
                    schedules.push(s);
                }
            }
            Err(e) => errors.extend(e),
        }
    }
    (schedules, errors)
}

/// The largest schedule file read (a definition is a few lines).
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// Reads and checks one schedule file.
pub fn load_file(file: &Path, config: &SchedulerConfig) -> Result<Schedule, Vec<DefError>> {
    let err = |field: &str, problem: String| DefError {
        file: file.to_path_buf(),
        field: field.to_string(),
        problem,
    };
    let size = std::fs::metadata(file)
        .map_err(|e| vec![err("file", format!("cannot read: {e}"))])?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(vec![err(
            "file",
            format!("{size} bytes; a schedule file is at most {MAX_FILE_BYTES} bytes"),
        )]);
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| vec![err("file", format!("cannot read as UTF-8 text: {e}"))])?;
    let def: ScheduleDef = toml::from_str(&text).map_err(|e| {
        let (field, problem) = describe_toml_error(&e, &text);
        vec![err(&field, problem)]
    })?;
    let problems: Vec<DefError> = check(&def, config)
        .into_iter()
        .map(|(field, problem)| err(field, problem))
        .collect();
    let cron = CronSchedule::parse(&def.schedule, &def.timezone);
    match cron {
        Ok(cron) if problems.is_empty() => Ok(Schedule {
            def,
            cron,
            file: file.to_path_buf(),
        }),
        Ok(_) => Err(problems),
        Err(e) => {
            let problem = e.to_string();
            let problem = problem
                .split_once(": ")
                .map(|(_, p)| p.to_string())
                .unwrap_or(problem);
            let mut all = vec![err(e.field(), problem)];
            all.extend(problems);
            Err(all)
        }
    }
}

/// Checks what serde cannot: names, routes, durations, URLs, column names, known databases.
fn check(def: &ScheduleDef, config: &SchedulerConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !valid_name(&def.name) {
        out.push(("name", format!("`{}` is not a valid name: use lowercase letters, digits, '-', '_' or '.', starting with a letter or digit", def.name)));
    }
    if !crate::db::tenants::valid_tenant_name(&def.tenant) {
        out.push((
            "tenant",
            format!("`{}` is not a valid tenant name", def.tenant),
        ));
    }
    if let Some(r) = &def.route
        && !["auto", "cheap", "batch"].contains(&r.as_str())
    {
        out.push((
            "route",
            format!("`{r}` is not a route; use auto, cheap or batch"),
        ));
    }
    if let Some(d) = &def.deadline
        && humantime::parse_duration(d).is_err()
    {
        out.push((
            "deadline",
            format!("`{d}` is not a duration such as 24h or 90m"),
        ));
    }
    if let Some(u) = &def.webhook_url
        && !url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        out.push(("webhook_url", format!("`{u}` is not an http(s) URL")));
    }
    if let Some(m) = &def.model
        && m.trim().is_empty()
    {
        out.push(("model", "is empty; name a model alias".into()));
    }
    match &def.source {
        SourceDef::Jsonl(j) => {
            if j.path.trim().is_empty() {
                out.push((
                    "source.jsonl.path",
                    "is empty; name a file or a glob".into(),
                ));
            } else if let Err(e) = glob::Pattern::new(&j.path) {
                out.push((
                    "source.jsonl.path",
                    format!("`{}` is not a glob: {e}", j.path),
                ));
            }
        }
        SourceDef::Sql(s) => {
            if !config.databases.contains_key(&s.database) {
                let known: Vec<&str> = config.databases.keys().map(String::as_str).collect();
                out.push((
                    "source.sql.database",
                    format!(
                        "`{}` is not in [scheduler.databases] (known: {}); add [scheduler.databases.{}] with url_env",
                        s.database,
                        if known.is_empty() { "none".into() } else { known.join(", ") },
                        s.database
                    ),
                ));
            }
            if !valid_column(&s.key) {
                out.push((
                    "source.sql.key",
                    format!("`{}` is not a column name", s.key),
                ));
            }
            if let Some(w) = &s.watermark
                && !valid_column(w)
            {
                out.push((
                    "source.sql.watermark",
                    format!("`{w}` is not a column name"),
                ));
            }
            if s.query.trim().is_empty() {
                out.push(("source.sql.query", "is empty; write a SELECT".into()));
            }
            if s.template.trim().is_empty() {
                out.push(("source.sql.template", "is empty; write the prompt".into()));
            }
            if s.max_rows == Some(0) {
                out.push(("source.sql.max_rows", "must be at least 1".into()));
            }
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    crate::db::tenants::valid_tenant_name(name)
}

/// A plain column name (it is quoted into SQL, so only these characters are allowed).
fn valid_column(c: &str) -> bool {
    let mut chars = c.chars();
    matches!(chars.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.len() <= 63
        && chars.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Turns a TOML/serde error into the field it is about and a readable problem.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> (String, String) {
    let message = e.message().trim().to_string();
    let line = e.span().map(|s| line_at(text, s.start)).unwrap_or_default();
    let header = line.trim();
    let table = if header.starts_with('[') && !header.starts_with("[[") {
        header
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string()
    } else {
        e.span()
            .map(|s| table_at(text, s.start))
            .unwrap_or_default()
    };
    let join = |key: &str| {
        if table.is_empty() {
            key.to_string()
        } else {
            format!("{table}.{key}")
        }
    };
    if let Some(f) = backticked(&message, "unknown field `") {
        return (
            join(&f),
            format!("unknown field{}", rest_after(&message, &f)),
        );
    }
    if let Some(f) = backticked(&message, "missing field `") {
        return (join(&f), "is required".into());
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !line.trim_start().starts_with('['));
    if let Some(v) = backticked(&message, "unknown variant `") {
        return match key {
            Some(k) => (
                join(&k),
                format!("`{v}` is not allowed{}", rest_after(&message, &v)),
            ),
            None => (
                "source".into(),
                format!("`{v}` is not a source kind; use [source.jsonl] or [source.sql]"),
            ),
        };
    }
    match key {
        Some(k) => (join(&k), message),
        None if table.is_empty() => ("file".into(), message),
        None => (table, message),
    }
}

/// The whole line that holds byte `at`.
fn line_at(text: &str, at: usize) -> String {
    let at = at.min(text.len());
    let start = text
        .get(..at)
        .and_then(|b| b.rfind('\n'))
        .map_or(0, |i| i + 1);
    let end = text
        .get(at..)
        .and_then(|a| a.find('\n'))
        .map_or(text.len(), |i| at + i);
    text.get(start..end).unwrap_or_default().to_string()
}

fn backticked(message: &str, prefix: &str) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    let end = message[start..].find('`')? + start;
    Some(message[start..end].to_string())
}

fn rest_after(message: &str, field: &str) -> String {
    message
        .split_once(&format!("`{field}`"))
        .map(|(_, r)| r.to_string())
        .unwrap_or_default()
}

/// The `[table]` header in force at byte `at`.
fn table_at(text: &str, at: usize) -> String {
    let at = at.min(text.len());
    let line_start = text
        .get(..at)
        .and_then(|b| b.rfind('\n'))
        .map_or(0, |i| i + 1);
    let before = text.get(..line_start).unwrap_or_default();
    before
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            (l.starts_with('[') && !l.starts_with("[["))
                .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Schedule, Vec<DefError>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, text).unwrap();
        let mut config = SchedulerConfig::default();
        config.databases.insert(
            "tickets".into(),
            super::super::DatabaseSource {
                url_env: "TICKETS_DATABASE_URL".into(),
            },
        );
        load_file(&file, &config)
    }

    fn fields(text: &str) -> Vec<String> {
        load(text)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    const OK: &str = r#"
name = "inbox"
schedule = "0 * * * *"
tenant = "acme"
[source.jsonl]
path = "inbox/*.jsonl"
"#;

    #[test]
    fn a_minimal_schedule_loads_with_utc_skip_and_enabled_defaults() {
        let s = load(OK).unwrap();
        assert_eq!(s.def.timezone, "UTC");
        assert_eq!(s.def.catch_up, CatchUp::Skip);
        assert!(s.def.enabled);
    }

    #[test]
    fn unknown_and_missing_fields_name_their_path() {
        assert_eq!(fields(&format!("colour = 1\n{OK}")), ["colour"]);
        assert_eq!(fields(&format!("{OK}extra = 1\n")), ["source.jsonl.extra"]);
        assert_eq!(
            fields("name = \"x\"\nschedule = \"@daily\"\n[source.jsonl]\npath = \"a\"\n"),
            ["tenant"]
        );
        assert_eq!(
            fields(&OK.replace("[source.jsonl]", "[source.csv]")),
            ["source"]
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(fields(&OK.replace("0 * * * *", "0 25 * * *")), ["schedule"]);
        assert_eq!(
            fields(&format!("timezone = \"Nowhere/City\"\n{OK}")),
            ["timezone"]
        );
        assert_eq!(
            fields(&format!("route = \"fast\"\ndeadline = \"soon\"\n{OK}")),
            ["route", "deadline"]
        );
        assert_eq!(
            fields(&format!("catch_up = \"always\"\n{OK}")),
            ["catch_up"]
        );
    }

    #[test]
    fn sql_sources_need_a_known_database_and_plain_columns() {
        let sql = r#"
name = "tickets"
schedule = "@daily"
tenant = "acme"
[source.sql]
database = "crm"
query = "SELECT * FROM tickets"
template = "{body}"
key = "id; drop"
watermark = "updated_at"
"#;
        assert_eq!(fields(sql), ["source.sql.database", "source.sql.key"]);
        let e = load(sql).unwrap_err();
        assert!(e[0].to_string().ends_with("s.toml: source.sql.database: `crm` is not in [scheduler.databases] (known: tickets); add [scheduler.databases.crm] with url_env"), "{}", e[0]);
    }

    #[test]
    fn two_files_with_one_name_are_a_problem_for_the_second() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), OK).unwrap();
        std::fs::write(dir.path().join("b.toml"), OK).unwrap();
        std::fs::write(dir.path().join("c.toml"), "not toml [").unwrap();
        let (ok, bad) = load_dir(dir.path(), &SchedulerConfig::default());
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 2);
        assert!(
            bad.iter()
                .any(|e| e.field == "name" && e.file.ends_with("b.toml"))
        );
        assert!(bad.iter().any(|e| e.file.ends_with("c.toml")));
    }
}
