//! Reruns the build when `migrations/` changes: `sqlx::migrate!` embeds the
//! migrations at compile time, so without this a new migration file would
//! not rebuild the crate.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
