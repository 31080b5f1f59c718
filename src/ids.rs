//! Prefixed, time-ordered identifiers (`job_…`, `batch_…`) over UUIDv7: sortable by creation
//! time and friendly to B-tree indexes.

/// A new id such as `job_01938f…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A new file id in OpenAI's spelling, `file-01938f…` (a hyphen, as the OpenAI SDKs expect).
pub fn new_file_id() -> String {
    format!("file-{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_prefixed_and_ordered() {
        let a = super::new_id("job");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_id("job");
        assert!(a.starts_with("job_") && a.len() == 36);
        assert!(a < b);
    }
}
