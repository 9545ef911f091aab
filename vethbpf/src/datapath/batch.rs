//! `BPF_MAP_LOOKUP_BATCH` (Linux 5.6): many entries of an array map in one
//! `bpf()` call. aya 0.14 reads one entry per call, and `endpoint list` on a node
//! with 1000 endpoints needs 8000 entries of the per-CPU counters.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// The values of entries `0..count` of the array map `map` (keys are `u32`
/// indexes), each `value_len` bytes as the kernel copies them out (for a per-CPU
/// map: the value rounded up to 8 bytes, times the possible CPUs), in index order.
pub(crate) fn lookup_array(
    map: BorrowedFd<'_>,
    count: u32,
    value_len: usize,
) -> io::Result<Vec<u8>> {
    let total = count as usize;
    let mut keys = vec![0u32; total];
    let mut values = vec![0u8; total * value_len];
    let mut done = 0usize;
    // The index the next call starts after (`out_batch` of the previous call).
    let mut cursor = 0u32;
    while done < total {
        // SAFETY: an all-zero bpf_attr is the kernel's "no options" value.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // `batch` is the union member BPF_MAP_*_BATCH reads.
        attr.batch.in_batch = if done == 0 {
            0
        } else {
            &cursor as *const u32 as u64
        };
        attr.batch.out_batch = &mut cursor as *mut u32 as u64;
        attr.batch.keys = keys[done..].as_mut_ptr() as u64;
        attr.batch.values = values[done * value_len..].as_mut_ptr() as u64;
        attr.batch.count = (total - done) as u32;
        attr.batch.map_fd = map.as_raw_fd() as u32;
        // SAFETY: the buffers behind `keys` and `values` hold `count` keys and
        // values of the sizes the kernel writes, and outlive the call; `cursor`
        // is a u32, the size of an array map's key.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_LOOKUP_BATCH as libc::c_long,
                &mut attr as *mut bpf_attr,
                std::mem::size_of::<bpf_attr>(),
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        // SAFETY: the kernel wrote back how many entries it copied.
        let copied = unsafe { attr.batch.count } as usize;
        done += copied;
        match err {
            None if copied > 0 => {}
            // ENOENT: the end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(e),
            None => break,
        }
    }
    if done < total {
        return Err(io::Error::other(format!(
            "the map has {done} entries, {total} were asked for"
        )));
    }
    // An array's batch walks indexes in order, so values[i] is entry i; check it.
    if keys.iter().enumerate().any(|(i, k)| *k as usize != i) {
        return Err(io::Error::other("batch lookup returned keys out of order"));
    }
    Ok(values)
}
