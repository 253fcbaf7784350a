//! A hostile test case: the attack is in build.rs.

include!(concat!(env!("OUT_DIR"), "/loot.rs"));

#[unsafe(no_mangle)]
pub extern "C" fn loot_len() -> usize {
    LOOT.len()
}
