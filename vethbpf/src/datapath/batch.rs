//! `BPF_MAP_LOOKUP_BATCH` (Linux 5.6): many entries of an array map in one
//! `bpf()` call. aya 0.14 reads one entry per call, and `endpoint list` on a node
//! with 1000 endpoints needs 30,000 entries of the per-CPU counters.
//!
//! The kernel's batch copies entry by entry (two `copy_to_user` each): ~0.3 us an
//! entry here, 9 ms of `endpoint list`'s 20 at 1000 endpoints. Large reads are
//! split across threads, one range each, so they take the CPUs there are.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// The values of entries `0..count` of the array map `map` (keys are `u32`
/// indexes), each `value_len` bytes as the kernel copies them out (for a per-CPU
/// map: the value rounded up to 8 bytes, times the possible CPUs), in index order.
/// Entries below this many are read in one go: a thread costs more than it saves.
const PARALLEL_FROM: u32 = 4096;

/// The values of entries `0..count` of the array map `map` (keys are `u32`
/// indexes), each `value_len` bytes as the kernel copies them out (for a per-CPU
/// map: the value rounded up to 8 bytes, times the possible CPUs), in index order.
/// A large read is split into ranges read at the same time (see the module docs).
pub(crate) fn lookup_array(
    map: BorrowedFd<'_>,
    count: u32,
    value_len: usize,
) -> io::Result<Vec<u8>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u32;
    if cpus < 2 || count < PARALLEL_FROM {
        return lookup_range(map, 0, count, value_len);
    }
    let per = count.div_ceil(cpus);
    let ranges: Vec<(u32, u32)> = (0..cpus)
        .map(|i| (i * per, (count - (i * per).min(count)).min(per)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let parts: Vec<io::Result<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .iter()
            .map(|&(start, n)| s.spawn(move || lookup_range(map, start, n, value_len)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a batch lookup thread panicked")))
            })
            .collect()
    });
    let mut values = Vec::with_capacity(count as usize * value_len);
    for part in parts {
        values.extend_from_slice(&part?);
    }
    Ok(values)
}

/// The values of entries `start..start + count` (see [`lookup_array`]).
fn lookup_range(
    map: BorrowedFd<'_>,
    start: u32,
    count: u32,
    value_len: usize,
) -> io::Result<Vec<u8>> {
    let total = count as usize;
    let mut keys = vec![0u32; total];
    let mut values = vec![0u8; total * value_len];
    let mut done = 0usize;
    // The index the next call starts after (`out_batch` of the previous call; for
    // the first, the one before `start`, or none from 0).
    let mut cursor = start.wrapping_sub(1);
    while done < total {
        let from = (done > 0 || start > 0).then_some(cursor);
        // SAFETY: the buffers behind `keys` and `values` hold `total - done` keys
        // and values of the sizes the kernel writes from these offsets; an array
        // map's cursor is a u32 index.
        let (copied, err) = unsafe {
            lookup_batch(
                map,
                from,
                &mut cursor,
                keys[done..].as_mut_ptr().cast(),
                values[done * value_len..].as_mut_ptr(),
                (total - done) as u32,
            )
        };
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
            "the map ends before entry {}; {} entries from {start} were asked for",
            start as usize + done,
            total
        )));
    }
    // An array's batch walks indexes in order, so values[i] is entry start + i;
    // check it.
    if keys
        .iter()
        .enumerate()
        .any(|(i, k)| *k as usize != start as usize + i)
    {
        return Err(io::Error::other("batch lookup returned keys out of order"));
    }
    Ok(values)
}

/// How many entries the hash map `map` holds (plain or LRU hash; keys of
/// `key_size`, values of `value_size` bytes): `BPF_MAP_LOOKUP_BATCH` in chunks,
/// a few calls where a walk with `BPF_MAP_GET_NEXT_KEY` makes one per entry (a
/// NAT table of 60,000 flows: 60,000). `Ok(None)` where the kernel has no batch
/// operation for the map (before 5.6): the caller walks it instead.
pub(crate) fn count_hash(
    map: BorrowedFd<'_>,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<Option<u64>> {
    // A chunk must hold a whole bucket (ENOSPC otherwise): grown on demand.
    let mut chunk = 1024usize.min(max_entries.max(1) as usize);
    let mut keys = vec![0u8; chunk * key_size as usize];
    let mut values = vec![0u8; chunk * value_size as usize];
    let mut total = 0u64;
    // The bucket the next call starts at (`out_batch` of the previous call).
    let mut cursor = 0u32;
    let mut first = true;
    loop {
        let next = cursor;
        // SAFETY: `keys` and `values` hold `chunk` keys and values of the map's
        // sizes; a hash map's cursor is a u32 bucket index.
        let (copied, err) = unsafe {
            lookup_batch(
                map,
                (!first).then_some(next),
                &mut cursor,
                keys.as_mut_ptr(),
                values.as_mut_ptr(),
                chunk as u32,
            )
        };
        let copied = copied as u64;
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None => {}
            // The end of the map: the last entries came with it.
            Some(libc::ENOENT) => return Ok(Some(total + copied)),
            // A bucket larger than the chunk: the same call with a larger one.
            Some(libc::ENOSPC) if chunk < max_entries as usize => {
                chunk = (chunk * 2).min(max_entries as usize);
                keys.resize(chunk * key_size as usize, 0);
                values.resize(chunk * value_size as usize, 0);
                cursor = next;
                continue;
            }
            Some(libc::EINVAL | libc::ENOTSUP | libc::EOPNOTSUPP) if first => return Ok(None),
            Some(_) => return Err(err.unwrap_or_else(|| io::Error::other("batch lookup"))),
        }
        total += copied;
        first = false;
        if total > u64::from(max_entries) {
            // Entries deleted and added meanwhile can be seen twice; no map holds
            // more than its capacity.
            return Ok(Some(u64::from(max_entries)));
        }
    }
}

/// One `BPF_MAP_LOOKUP_BATCH` call: up to `count` entries of `map` after the
/// cursor `from` (`None`: from the start) into `keys` and `values`, the cursor for
/// the next call into `next`. How many entries it copied, and its error if any.
///
/// # Safety
///
/// `keys` and `values` must point to room for `count` keys and values of the sizes
/// the kernel writes for this map, and the map's batch cursor must be a `u32`.
unsafe fn lookup_batch(
    map: BorrowedFd<'_>,
    from: Option<u32>,
    next: &mut u32,
    keys: *mut u8,
    values: *mut u8,
    count: u32,
) -> (usize, Option<io::Error>) {
    // SAFETY: an all-zero bpf_attr is the kernel's "no options" value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // `batch` is the union member BPF_MAP_*_BATCH reads.
    attr.batch.in_batch = from.as_ref().map_or(0, |c| c as *const u32 as u64);
    attr.batch.out_batch = next as *mut u32 as u64;
    attr.batch.keys = keys as u64;
    attr.batch.values = values as u64;
    attr.batch.count = count;
    attr.batch.map_fd = map.as_raw_fd() as u32;
    // SAFETY: the caller's contract covers the buffers; the cursors live on our
    // caller's stack for the call.
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
    (unsafe { attr.batch.count } as usize, err)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use aya_obj::generated::bpf_map_type;

    use super::*;

    fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
        // SAFETY: `attr` is a valid bpf_attr filled for `cmd` by the caller.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd as libc::c_long,
                attr as *mut bpf_attr,
                std::mem::size_of::<bpf_attr>(),
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// A map of u32 keys and u64 values.
    fn create(map_type: bpf_map_type, max_entries: u32) -> OwnedFd {
        // SAFETY: all-zero is "no options".
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.__bindgen_anon_1.map_type = map_type as u32;
        attr.__bindgen_anon_1.key_size = 4;
        attr.__bindgen_anon_1.value_size = 8;
        attr.__bindgen_anon_1.max_entries = max_entries;
        let fd = bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).expect("BPF_MAP_CREATE");
        // SAFETY: the kernel just gave us this descriptor.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn put(map: &OwnedFd, key: u32, value: u64) {
        // SAFETY: all-zero is "no options".
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
        attr.__bindgen_anon_2.key = &key as *const u32 as u64;
        attr.__bindgen_anon_2.__bindgen_anon_1.value = &value as *const u64 as u64;
        bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).expect("update");
    }

    /// An array map of `n` u64 values, entry i holding i * 3 + 1.
    fn array(n: u32) -> OwnedFd {
        let map = create(bpf_map_type::BPF_MAP_TYPE_ARRAY, n);
        for i in 0..n {
            put(&map, i, u64::from(i) * 3 + 1);
        }
        map
    }

    fn values(bytes: &[u8]) -> Vec<u64> {
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }

    #[test]
    #[ignore = "needs root: creates a BPF map"]
    fn split_reads_return_every_entry_in_order() {
        let n = 3 * PARALLEL_FROM + 7;
        let map = array(n);
        for count in [1, 100, PARALLEL_FROM - 1, PARALLEL_FROM, n - 1, n] {
            let got = values(&lookup_array(map.as_fd(), count, 8).expect("lookup"));
            let want: Vec<u64> = (0..count).map(|i| u64::from(i) * 3 + 1).collect();
            assert_eq!(got, want, "first {count} entries");
        }
        let range = values(&lookup_range(map.as_fd(), 4000, 300, 8).expect("range"));
        assert_eq!(range[0], 4000 * 3 + 1);
        assert_eq!(range.len(), 300);
        // More than the map has is an error, not a short answer.
        assert!(lookup_array(map.as_fd(), n + 1, 8).is_err());
    }

    /// A hash map of `n` u32 -> u64 entries, room for `max`.
    fn hash(n: u32, max: u32) -> OwnedFd {
        let map = create(bpf_map_type::BPF_MAP_TYPE_HASH, max);
        for i in 0..n {
            put(&map, i.wrapping_mul(2_654_435_761), u64::from(i));
        }
        map
    }

    #[test]
    #[ignore = "needs root: creates BPF maps"]
    fn count_hash_counts_every_entry() {
        for (n, max) in [(0, 16), (1, 16), (16, 16), (1000, 4096), (5000, 8192)] {
            let map = hash(n, max);
            assert_eq!(
                count_hash(map.as_fd(), 4, 8, max).expect("count"),
                Some(u64::from(n)),
                "{n} entries in a map of {max}"
            );
        }
    }
}
