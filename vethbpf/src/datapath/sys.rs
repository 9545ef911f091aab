//! The few bpf() commands used without aya: a map's full info (its BTF type ids
//! included), and walking, reading and writing entries as raw bytes of whatever
//! size the map has (map fill and map migration work on every map this way,
//! without a typed view per map); a pinned object opened as a bare descriptor and
//! a program's id (for cls_bpf filters, which netlink makes).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `union bpf_attr` for the element commands (linux/bpf.h).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value` (lookup, update) or `next_key` (get_next_key).
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_map_info` (linux/bpf.h), the fields up to the BTF type ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MapInfoRaw {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: [u8; 16],
    pub ifindex: u32,
    pub btf_vmlinux_value_type_id: u32,
    pub netns_dev: u64,
    pub netns_ino: u64,
    pub btf_id: u32,
    pub btf_key_type_id: u32,
    pub btf_value_type_id: u32,
    _pad: u32,
    pub map_extra: u64,
}

fn bpf(cmd: libc::c_long, attr: *const u8, size: usize) -> io::Result<()> {
    bpf_ret(cmd, attr, size).map(drop)
}

/// bpf(2) and its non-negative return value.
fn bpf_ret(cmd: libc::c_long, attr: *const u8, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points at a bpf_attr prefix of `size` bytes whose pointers the
    // callers keep valid for the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as u32) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `union bpf_attr` for BPF_OBJ_GET.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The pinned object at `path`, opened (BPF_OBJ_GET).
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf_ret(
        BPF_OBJ_GET,
        (&raw const attr).cast(),
        size_of::<ObjGetAttr>(),
    )?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The start of `struct bpf_prog_info`: the kernel fills in as much as asked for.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
}

/// The id of the program behind `fd`.
pub(crate) fn prog_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = ProgInfoHead::default();
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<ProgInfoHead>() as u32,
        info: (&raw mut info) as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&raw const attr).cast(),
        size_of::<InfoAttr>(),
    )?;
    Ok(info.id)
}

/// The map's info, BTF type ids included.
pub(crate) fn map_info(fd: BorrowedFd<'_>) -> io::Result<MapInfoRaw> {
    let mut info = MapInfoRaw::default();
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<MapInfoRaw>() as u32,
        info: (&raw mut info) as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&raw const attr).cast(),
        size_of::<InfoAttr>(),
    )?;
    Ok(info)
}

fn elem(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    key: Option<&[u8]>,
    value: *mut u8,
    flags: u64,
) -> io::Result<()> {
    let attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value: value as u64,
        flags,
    };
    bpf(cmd, (&raw const attr).cast(), size_of::<ElemAttr>())
}

/// The key after `key` (the first one for `None`) into `next`; `Ok(false)` past the
/// last. Both hold the map's key size.
pub(crate) fn next_key(
    fd: BorrowedFd<'_>,
    key: Option<&[u8]>,
    next: &mut [u8],
) -> io::Result<bool> {
    match elem(BPF_MAP_GET_NEXT_KEY, fd, key, next.as_mut_ptr(), 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every key of the map, up to `limit` (a key deleted during the walk restarts it
/// from the first one: the cap keeps that finite).
pub(crate) fn keys(fd: BorrowedFd<'_>, key_size: u32, limit: u64) -> io::Result<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut next = vec![0u8; key_size as usize];
    while (out.len() as u64) < limit {
        let prev = out.last().map(Vec::as_slice);
        if !next_key(fd, prev, &mut next)? {
            break;
        }
        out.push(next.clone());
    }
    Ok(out)
}

/// The value of `key` into `value` (its size: the map's value size, or for a per-CPU
/// map the value size rounded up to 8, times the possible CPUs). `Ok(false)`: no
/// such key.
pub(crate) fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    match elem(BPF_MAP_LOOKUP_ELEM, fd, Some(key), value.as_mut_ptr(), 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `value` (sized as for [`lookup`]) under `key`.
pub(crate) fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    elem(
        BPF_MAP_UPDATE_ELEM,
        fd,
        Some(key),
        value.as_ptr().cast_mut(),
        0, // BPF_ANY
    )
}
