//! Size and speed optimization with binaryen's `wasm-opt`. binaryen parses
//! the customer's module, so kiln runs it in the build sandbox; this module
//! only says how.

/// The optimization level kiln's pipeline uses.
pub const LEVEL: &str = "-O3";

/// wasm-opt's arguments: the optimization `level` (e.g. [`LEVEL`]) and the
/// WebAssembly features Rust's wasm32-wasip1 target uses (named explicitly,
/// because a stripped module no longer records them).
pub fn wasm_opt_args(level: &str, input: &str, output: &str) -> Vec<String> {
    [
        level,
        "--enable-bulk-memory",
        "--enable-multivalue",
        "--enable-mutable-globals",
        "--enable-nontrapping-float-to-int",
        "--enable-reference-types",
        "--enable-sign-ext",
        input,
        "-o",
        output,
    ]
    .map(String::from)
    .to_vec()
}
