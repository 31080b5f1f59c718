//! What a key may do. Three scopes: `read` (see the tenant's jobs, batches, files and budgets),
//! `submit` (create and cancel work; implies `read`, since a producer polls what it submitted),
//! and `admin` (the tenant's own administration: dead-letter requeue and purge, webhook
//! endpoints; implies `read`). The operator's `/v1/admin/…` API takes only the admin key.
//!
//! The rule is decided from the method and path alone, so a route added later is covered
//! without a line of its own: reads are `GET`/`HEAD`, everything else submits, unless listed.

use std::fmt;

/// One permission a tenant key can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Submit,
    Read,
    Admin,
}

impl Scope {
    /// Every scope, in the order `keys list` shows them.
    pub const ALL: [Scope; 3] = [Scope::Submit, Scope::Read, Scope::Admin];

    /// The name used in the CLI, the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// The scope named `s`.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s.trim())
    }

    /// Parses `submit,read`; the error names the unknown word.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut out = Vec::new();
        for word in s.split(',').filter(|w| !w.trim().is_empty()) {
            let scope = Scope::parse(word).ok_or_else(|| {
                format!("unknown scope `{}`: use submit, read or admin", word.trim())
            })?;
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        if out.is_empty() {
            return Err("name at least one scope: submit, read or admin".into());
        }
        Ok(out)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// A tenant key carrying this scope (or one that implies it).
    Scope(Scope),
    /// The operator's admin key.
    AdminKey,
}

/// What a request with `method` on `path` needs.
pub fn required(method: &str, path: &str) -> Needs {
    if path == "/v1/admin" || path.starts_with("/v1/admin/") {
        return Needs::AdminKey;
    }
    let read = matches!(method, "GET" | "HEAD" | "OPTIONS");
    let tenant_admin = path.starts_with("/v1/dead_letters/")
        || path == "/v1/webhook_endpoints"
        || path.starts_with("/v1/webhook_endpoints/");
    match (read, tenant_admin) {
        (true, _) => Needs::Scope(Scope::Read),
        (false, true) => Needs::Scope(Scope::Admin),
        (false, false) => Needs::Scope(Scope::Submit),
    }
}

/// Whether a key with `held` scopes may do what `needed` asks.
pub fn allows(held: &[Scope], needed: Scope) -> bool {
    held.contains(&needed) || (needed == Scope::Read && !held.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_the_scope_its_method_and_path_imply() {
        let cases = [
            ("GET", "/v1/jobs", Needs::Scope(Scope::Read)),
            (
                "GET",
                "/v1/batches/batch_1/results",
                Needs::Scope(Scope::Read),
            ),
            ("POST", "/v1/jobs", Needs::Scope(Scope::Submit)),
            ("POST", "/v1/jobs/job_1/cancel", Needs::Scope(Scope::Submit)),
            ("POST", "/v1/chat/completions", Needs::Scope(Scope::Submit)),
            ("DELETE", "/v1/files/file-1", Needs::Scope(Scope::Submit)),
            (
                "POST",
                "/v1/dead_letters/requeue",
                Needs::Scope(Scope::Admin),
            ),
            ("POST", "/v1/webhook_endpoints", Needs::Scope(Scope::Admin)),
            ("GET", "/v1/webhook_endpoints", Needs::Scope(Scope::Read)),
            ("GET", "/v1/admin/tenants", Needs::AdminKey),
            ("POST", "/v1/admin/keys", Needs::AdminKey),
            ("GET", "/v1/administrator", Needs::Scope(Scope::Read)),
        ];
        for (method, path, needs) in cases {
            assert_eq!(required(method, path), needs, "{method} {path}");
        }
    }

    #[test]
    fn submit_and_admin_imply_read_but_read_implies_nothing_else() {
        use Scope::*;
        assert!(allows(&[Read], Read));
        assert!(!allows(&[Read], Submit));
        assert!(!allows(&[Read], Admin));
        assert!(allows(&[Submit], Read));
        assert!(!allows(&[Submit], Admin));
        assert!(allows(&[Admin], Read));
        assert!(!allows(&[Admin], Submit));
        assert!(!allows(&[], Read));
    }

    #[test]
    fn scope_lists_parse_and_name_the_unknown_word() {
        assert_eq!(
            Scope::parse_list("submit, read,submit").unwrap(),
            vec![Scope::Submit, Scope::Read]
        );
        assert!(
            Scope::parse_list("submit,write")
                .unwrap_err()
                .contains("`write`")
        );
        assert!(Scope::parse_list("").is_err());
    }
}
