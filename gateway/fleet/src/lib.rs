//! Gatehouse fleets: many instances serving one shared configuration kept in etcd.
//!
//! [`layout`] is the key layout (versioned, documented for other tools); [`etcd::Store`] reads
//! whole states at one revision, commits changes as transactions that compare the revision they
//! were based on, stores the files a configuration names by content ([`refs`]) and keeps the
//! instance records; [`cache`] is an instance's last good configuration on disk. Following the
//! store and applying revisions is the admin crate's (it owns every configuration change).

pub mod cache;
pub mod etcd;
pub mod layout;
pub mod metrics;
pub mod refs;

pub use cache::{Cache, Cached};
pub use etcd::{Error, InstanceRecord, Snapshot, Store, Watched};
pub use layout::{Keys, Shared};
