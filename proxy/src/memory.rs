//! `GET /memory` on the admin port: what the allocator holds, in the shape of Envoy's admin
//! `/memory` (byte counts as strings), so what reads Envoy's reads the sidecar's. It tells live
//! data (`allocated`) from memory the allocator keeps for reuse (`pageheap_free`: pages that
//! are mapped, resident or not, but hold nothing live) and from what it has handed back to the
//! system, which is how a high RSS after a burst is told apart from a leak. Envoy's
//! `total_thread_cache` has no jemalloc statistic readable without `unsafe`, and is left out.

#[cfg(feature = "jemalloc")]
use tikv_jemalloc_ctl::{epoch, stats};

/// The allocator's figures, or why there are none (the `jemalloc` feature off, or jemalloc
/// refusing a read).
pub fn stats() -> Result<serde_json::Value, String> {
    #[cfg(feature = "jemalloc")]
    {
        let read = || -> Result<serde_json::Value, tikv_jemalloc_ctl::Error> {
            // jemalloc's statistics are a snapshot taken when the epoch advances.
            epoch::advance()?;
            let (allocated, active, mapped) = (
                stats::allocated::read()?,
                stats::active::read()?,
                stats::mapped::read()?,
            );
            let (resident, retained) = (stats::resident::read()?, stats::retained::read()?);
            Ok(serde_json::json!({
                "allocated": allocated.to_string(),
                "heap_size": mapped.to_string(),
                "pageheap_free": mapped.saturating_sub(active).to_string(),
                "pageheap_unmapped": retained.to_string(),
                "total_physical_bytes": resident.to_string(),
            }))
        };
        read().map_err(|error| format!("jemalloc statistics: {error}"))
    }
    #[cfg(not(feature = "jemalloc"))]
    Err("built without jemalloc: no allocator statistics".to_owned())
}

#[cfg(all(test, feature = "jemalloc"))]
mod tests {
    use super::stats;

    #[test]
    fn reports_envoys_fields_as_byte_counts() {
        let stats = stats().expect("jemalloc statistics");
        let bytes = |field: &str| -> u64 {
            let value = stats[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field}: {stats}"));
            value.parse().unwrap_or_else(|_| panic!("{field}: {value}"))
        };
        let fields = [
            "allocated",
            "heap_size",
            "pageheap_free",
            "pageheap_unmapped",
            "total_physical_bytes",
        ];
        assert_eq!(stats.as_object().map(|o| o.len()), Some(fields.len()));
        for field in fields {
            bytes(field);
        }
        assert!(bytes("allocated") <= bytes("heap_size"), "{stats}");
        assert!(bytes("pageheap_free") < bytes("heap_size"), "{stats}");
    }
}
