//! The WASI preview1 calls a proxy-wasm filter makes: stdout and stderr go
//! to the plugin's log, clocks and randomness work, there is no file, no
//! environment and no argument. As in `proxy.rs`, each import is a
//! function named like it; [`add_to_linker`] registers them.

use super::HostState;
use super::memory::{read, write, write_u32};
use std::collections::HashSet;
use wasmtime::{Caller, Linker};

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;
const MODULE: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;

pub(crate) fn add_to_linker(
    linker: &mut Linker<HostState>,
    defined: &mut HashSet<(&'static str, &'static str)>,
) -> wasmtime::Result<()> {
    // Each import is linked under its function's own name, or under the
    // names given when one function answers several.
    macro_rules! wasi {
        ($($name:ident),* $(,)?) => {$(
            wasi!(stringify!($name) => $name);
        )*};
        ($name:expr => $f:expr) => {{
            linker.func_wrap(MODULE, $name, $f)?;
            defined.insert((MODULE, $name));
        }};
    }

    wasi!(fd_write, clock_time_get, random_get);
    for name in ["environ_sizes_get", "args_sizes_get"] {
        wasi!(name => no_entries_sizes_get);
    }
    for name in ["environ_get", "args_get"] {
        wasi!(name => no_entries_get);
    }
    wasi!(
        proc_exit,
        sched_yield,
        fd_close,
        fd_fdstat_get,
        fd_prestat_get,
        fd_prestat_dir_name,
        fd_seek,
        fd_read,
    );
    Ok(())
}

/// stdout and stderr go to the plugin's log, a line per call; any other
/// descriptor is refused.
fn fd_write(mut c: C, fd: i32, iovs: u32, count: u32, written: u32) -> R {
    if fd != 1 && fd != 2 {
        return Ok(ERRNO_BADF);
    }
    let mut text = Vec::new();
    for i in 0..count.min(1024) {
        let iov = read(&mut c, iovs + i * 8, 8)?;
        let ptr = u32::from_le_bytes(iov[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(iov[4..8].try_into().expect("4 bytes"));
        text.extend(read(&mut c, ptr, len.min(64 * 1024))?);
    }
    let level = if fd == 1 { "stdout" } else { "stderr" };
    let message = String::from_utf8_lossy(&text).trim_end().to_owned();
    c.data_mut().log(level, message)?;
    write_u32(&mut c, written, text.len() as u32)?;
    Ok(ERRNO_SUCCESS)
}

fn clock_time_get(mut c: C, _id: i32, _precision: i64, ret: u32) -> R {
    // The scenario's clock, for the real-time and monotonic clocks alike.
    let now = c.data().now_ns;
    write(&mut c, ret, &now.to_le_bytes())?;
    Ok(ERRNO_SUCCESS)
}

/// The most random bytes one `random_get` hands over.
const MAX_RANDOM_BYTES: u32 = 1 << 20;

fn random_get(mut c: C, ptr: u32, len: u32) -> R {
    if len > MAX_RANDOM_BYTES {
        return Ok(ERRNO_INVAL);
    }
    let mut bytes = vec![0u8; len as usize];
    rand::fill(&mut bytes[..]);
    write(&mut c, ptr, &bytes)?;
    Ok(ERRNO_SUCCESS)
}

/// `environ_sizes_get` and `args_sizes_get`: there are none.
fn no_entries_sizes_get(mut c: C, count: u32, size: u32) -> R {
    write_u32(&mut c, count, 0)?;
    write_u32(&mut c, size, 0)?;
    Ok(ERRNO_SUCCESS)
}

/// `environ_get` and `args_get`: nothing to write.
fn no_entries_get(_c: C, _a: u32, _b: u32) -> R {
    Ok(ERRNO_SUCCESS)
}

fn proc_exit(_c: C, code: i32) -> wasmtime::Result<()> {
    wasmtime::bail!("the plugin called proc_exit({code})")
}

fn sched_yield(_c: C) -> R {
    Ok(ERRNO_SUCCESS)
}

fn fd_close(_c: C, _fd: i32) -> R {
    Ok(ERRNO_BADF)
}

fn fd_fdstat_get(_c: C, _fd: i32, _ret: u32) -> R {
    Ok(ERRNO_BADF)
}

fn fd_prestat_get(_c: C, _fd: i32, _ret: u32) -> R {
    Ok(ERRNO_BADF)
}

fn fd_prestat_dir_name(_c: C, _fd: i32, _p: u32, _l: u32) -> R {
    Ok(ERRNO_BADF)
}

fn fd_seek(_c: C, _fd: i32, _off: i64, _whence: i32, _ret: u32) -> R {
    Ok(ERRNO_BADF)
}

fn fd_read(_c: C, _fd: i32, _iovs: u32, _n: u32, _ret: u32) -> R {
    Ok(ERRNO_BADF)
}
