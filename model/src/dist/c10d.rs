//! Safe wrappers over `csrc/sftok_c10d.cpp`: libtorch's c10d stores and process groups. Every
//! C++ exception comes back as an `Err` carrying c10d's message; nothing aborts.

use anyhow::{Result, anyhow};
use crate::ffi::{AtTensor, check};
use std::ffi::{CString, c_char};
use std::path::Path;
use std::time::Duration;
use tch::Tensor;

#[repr(C)]
struct RawStore {
    _private: [u8; 0],
}
#[repr(C)]
struct RawPg {
    _private: [u8; 0],
}
#[repr(C)]
struct RawWork {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn sftok_c10d_tcp_store(host: *const c_char, port: u16, is_server: i32, world_size: i32, timeout_ms: i64, out: *mut *mut RawStore) -> *mut c_char;
    fn sftok_c10d_file_store(path: *const c_char, world_size: i32, timeout_ms: i64, out: *mut *mut RawStore) -> *mut c_char;
    fn sftok_c10d_prefix_store(base: *mut RawStore, prefix: *const c_char, out: *mut *mut RawStore) -> *mut c_char;
    fn sftok_c10d_store_free(s: *mut RawStore);
    fn sftok_c10d_store_set(s: *mut RawStore, key: *const c_char, data: *const u8, len: usize) -> *mut c_char;
    fn sftok_c10d_store_get(s: *mut RawStore, key: *const c_char, timeout_ms: i64, data: *mut *mut u8, len: *mut usize) -> *mut c_char;
    fn sftok_c10d_bytes_free(data: *mut u8);
    fn sftok_c10d_store_check(s: *mut RawStore, key: *const c_char, exists: *mut i32) -> *mut c_char;
    fn sftok_c10d_gloo(s: *mut RawStore, rank: i32, size: i32, timeout_ms: i64, ifnames: *const c_char, out: *mut *mut RawPg) -> *mut c_char;
    #[cfg(feature = "nccl")]
    fn sftok_c10d_nccl(s: *mut RawStore, rank: i32, size: i32, timeout_ms: i64, out: *mut *mut RawPg) -> *mut c_char;
    fn sftok_c10d_pg_free(pg: *mut RawPg);
    fn sftok_c10d_allreduce_start(pg: *mut RawPg, t: *const AtTensor, op: i32, out: *mut *mut RawWork) -> *mut c_char;
    fn sftok_c10d_broadcast_start(pg: *mut RawPg, t: *const AtTensor, root: i32, out: *mut *mut RawWork) -> *mut c_char;
    fn sftok_c10d_barrier_start(pg: *mut RawPg, out: *mut *mut RawWork) -> *mut c_char;
    fn sftok_c10d_work_wait(w: *mut RawWork) -> *mut c_char;
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{s:?} contains a NUL byte"))
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// A c10d key-value store: the rendezvous of a process group, and small messages between ranks.
pub struct Store(*mut RawStore);

// c10d stores lock internally; the handle is a counted pointer.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// A TCPStore at `host:port`: the server (it waits up to `timeout` for `world_size` clients,
    /// itself included) or a client.
    pub fn tcp(host: &str, port: u16, is_server: bool, world_size: usize, timeout: Duration) -> Result<Store> {
        let mut out = std::ptr::null_mut();
        let host_c = cstr(host)?;
        check(unsafe { sftok_c10d_tcp_store(host_c.as_ptr(), port, is_server as i32, world_size as i32, millis(timeout), &mut out) })?;
        Ok(Store(out))
    }

    /// A FileStore: ranks that share a file on one file system (tests).
    pub fn file(path: &Path, world_size: usize, timeout: Duration) -> Result<Store> {
        let mut out = std::ptr::null_mut();
        let p = cstr(&path.display().to_string())?;
        check(unsafe { sftok_c10d_file_store(p.as_ptr(), world_size as i32, millis(timeout), &mut out) })?;
        Ok(Store(out))
    }

    /// Keys of the returned store are `prefix/<key>` in this one.
    pub fn prefixed(&self, prefix: &str) -> Result<Store> {
        let mut out = std::ptr::null_mut();
        let p = cstr(prefix)?;
        check(unsafe { sftok_c10d_prefix_store(self.0, p.as_ptr(), &mut out) })?;
        Ok(Store(out))
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = cstr(key)?;
        check(unsafe { sftok_c10d_store_set(self.0, k.as_ptr(), value.as_ptr(), value.len()) })
    }

    /// Waits up to `timeout` for `key`, then returns its value.
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let k = cstr(key)?;
        let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
        check(unsafe { sftok_c10d_store_get(self.0, k.as_ptr(), millis(timeout), &mut data, &mut len) })?;
        let v = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { sftok_c10d_bytes_free(data) };
        Ok(v)
    }

    pub fn contains(&self, key: &str) -> Result<bool> {
        let k = cstr(key)?;
        let mut exists = 0;
        check(unsafe { sftok_c10d_store_check(self.0, k.as_ptr(), &mut exists) })?;
        Ok(exists != 0)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        unsafe { sftok_c10d_store_free(self.0) }
    }
}

/// The reduction of an all-reduce.
#[derive(Clone, Copy, Debug)]
pub enum ReduceOp {
    Sum = 0,
    Max = 1,
}

/// A c10d process group (Gloo for CPU tensors, NCCL for CUDA tensors).
pub struct ProcessGroup {
    raw: *mut RawPg,
    pub backend: &'static str,
}

unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

/// A collective in flight; [`Work::wait`] finishes it. Dropping it unwaited waits too.
pub struct Work(*mut RawWork);

impl Work {
    pub fn wait(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.0, std::ptr::null_mut());
        check(unsafe { sftok_c10d_work_wait(raw) })
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if !self.0.is_null() {
            let _ = check(unsafe { sftok_c10d_work_wait(self.0) });
        }
    }
}

impl ProcessGroup {
    /// ProcessGroupGloo of `size` ranks rendezvousing through `store`, on the interfaces in
    /// `ifnames` (comma-separated, as `GLOO_SOCKET_IFNAME`) or libtorch's default device; every
    /// collective fails after `timeout`.
    pub fn gloo(store: &Store, rank: usize, size: usize, timeout: Duration, ifnames: Option<&str>) -> Result<ProcessGroup> {
        let mut out = std::ptr::null_mut();
        let names = cstr(ifnames.unwrap_or(""))?;
        check(unsafe { sftok_c10d_gloo(store.0, rank as i32, size as i32, millis(timeout), names.as_ptr(), &mut out) })?;
        Ok(ProcessGroup { raw: out, backend: "gloo" })
    }

    /// ProcessGroupNCCL (built with the `nccl` feature): CUDA tensors on this rank's GPU.
    #[cfg(feature = "nccl")]
    pub fn nccl(store: &Store, rank: usize, size: usize, timeout: Duration) -> Result<ProcessGroup> {
        let mut out = std::ptr::null_mut();
        check(unsafe { sftok_c10d_nccl(store.0, rank as i32, size as i32, millis(timeout), &mut out) })?;
        Ok(ProcessGroup { raw: out, backend: "nccl" })
    }

    #[cfg(not(feature = "nccl"))]
    pub fn nccl(_store: &Store, _rank: usize, _size: usize, _timeout: Duration) -> Result<ProcessGroup> {
        anyhow::bail!("this build has no NCCL: rebuild with `cargo build --release --features nccl` (model/build.rs lists the CUDA headers it needs), or train on CPU tensors over Gloo")
    }

    /// Starts an in-place all-reduce of `t` (contiguous).
    pub fn allreduce_start(&self, t: &Tensor, op: ReduceOp) -> Result<Work> {
        let mut out = std::ptr::null_mut();
        check(unsafe { sftok_c10d_allreduce_start(self.raw, t.as_ptr() as *const AtTensor, op as i32, &mut out) })?;
        Ok(Work(out))
    }

    pub fn allreduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        self.allreduce_start(t, op)?.wait()
    }

    /// Starts an in-place broadcast of `t` (contiguous) from rank `root`.
    pub fn broadcast_start(&self, t: &Tensor, root: usize) -> Result<Work> {
        let mut out = std::ptr::null_mut();
        check(unsafe { sftok_c10d_broadcast_start(self.raw, t.as_ptr() as *const AtTensor, root as i32, &mut out) })?;
        Ok(Work(out))
    }

    pub fn barrier(&self) -> Result<()> {
        let mut out = std::ptr::null_mut();
        check(unsafe { sftok_c10d_barrier_start(self.raw, &mut out) })?;
        Work(out).wait()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        unsafe { sftok_c10d_pg_free(self.raw) }
    }
}
