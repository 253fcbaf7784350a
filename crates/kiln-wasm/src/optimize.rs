//! Size and speed optimization with binaryen's `wasm-opt`. binaryen parses
//! the customer's module, so kiln runs it in the build sandbox; this module
//! only says how.

/// wasm-opt's arguments: the optimization level and the WebAssembly
/// features Rust's wasm32-wasip1 target uses (named explicitly, because a
/// stripped module no longer records them).
pub fn wasm_opt_args(input: &str, output: &str) -> Vec<String> {
    [
        "-O3",
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
