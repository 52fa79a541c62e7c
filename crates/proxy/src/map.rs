//! [`FastMap`], the hash map of the per-request lookups.

/// A hash map for the per-request lookups (Service by host, pooled connections by endpoint).
/// Its keys come from the config, never from a client, so it trades SipHash's resistance to
/// chosen keys for speed; the seed is still random per process.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
