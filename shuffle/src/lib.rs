//! Sluice's shuffle tier.
//!
//! Staged batch mode cuts plans into stages at exchanges; each stage's tasks
//! write their output partitions through the shuffle tier to object storage.
//! This crate holds the pieces shared by writers, readers and shuffle
//! workers. It starts with the wire and storage format versions and the
//! memory budget that bounds buffered shuffle data; the exchange operators
//! and the Flight service build on them.

mod budget;

pub use budget::{BudgetPermit, MemoryBudget};

/// Version of the shuffle wire protocol (Flight `do_put` / `do_get`
/// descriptors and tickets). Peers with another major version refuse to talk.
pub const SHUFFLE_PROTOCOL_VERSION: u32 = 1;

/// Version of the stored shuffle format: one object per task attempt holding
/// all its output partitions as blocks, plus a small index manifest.
pub const SHUFFLE_FORMAT_VERSION: u32 = 1;
