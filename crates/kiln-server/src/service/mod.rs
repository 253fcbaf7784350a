//! The use-cases behind the routes, callable without HTTP: queueing an
//! upload, recording what a worker reports, and the queue's housekeeping.
//! Each writes through [`Stores`] and undoes what it wrote when it is
//! refused, so a refusal leaves no row and no blob behind; the routes only
//! turn requests into their inputs and their errors into answers.

pub mod housekeeping;
pub mod report;
pub mod upload;

use kiln_store::{BlobStore, MetaStore};

/// The two stores a use-case writes: metadata rows and blobs.
#[derive(Clone, Copy)]
pub struct Stores<'a> {
    /// Metadata rows: applications, builds and versions.
    pub meta: &'a MetaStore,
    /// Blobs by key: sources, modules, logs and signed artifacts.
    pub blobs: &'a BlobStore,
}

impl crate::AppState {
    /// This server's stores, for the use-cases.
    pub fn stores(&self) -> Stores<'_> {
        Stores {
            meta: &self.meta,
            blobs: &self.blobs,
        }
    }
}
