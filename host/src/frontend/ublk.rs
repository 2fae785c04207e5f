//! [`UblkServer`]: the ublk transport — a [`BlockDevice`] as `/dev/ublkbN`, served by this
//! process through the kernel's ublk driver (`ublk_drv`, Linux 6.0+) with libublk.
//!
//! The kernel queues block requests to io_uring commands; one thread per hardware queue takes
//! them (`UblkQueue::wait_and_handle_io`), runs them on the device synchronously, and commits
//! the result with the next fetch. Requests map one to one onto the device: READ → read,
//! WRITE → write (FUA honoured), FLUSH → the durability barrier, DISCARD → discard,
//! WRITE_ZEROES → write-zeroes; anything else is EOPNOTSUPP, a device error is its errno.
//!
//! # A swap device the kernel can rely on
//!
//! The kernel swaps *to* this process, so this process must never wait on swap itself:
//! - the whole process's memory is locked (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`)
//!   before the first device starts — without it the kernel swaps the server's own pages
//!   through the server and stalls (test-recipes.md saw it after 224 pages);
//! - every queue thread is an I/O flusher ([`super::become_io_flusher`]);
//! - the I/O buffers are allocated once per queue (`queue_depth` × `max_io_buf_bytes`) at
//!   start, and a request is served in place in its buffer: nothing is allocated per request
//!   by the transport.
//!
//! The device advertises the pool's page size as its logical block size (so every request
//! is page-aligned, which the device requires), a volatile cache with FUA (so flushes and FUA
//! writes reach it) and discard and write-zeroes (so `swapon --discard` sends invalidates).
//!
//! # User recovery
//!
//! Devices are created with `UBLK_F_USER_RECOVERY`: when the host process goes away (an
//! upgrade, a crash) the kernel keeps `/dev/ublkbN` and queues its I/O, and a restarted host
//! takes the same device over ([`UblkServer::start`] with `recover`) — with a persistent pool,
//! processes swapped to it survive the host's restart. Detaching deletes the device. And with
//! `UBLK_F_USER_RECOVERY_REISSUE`: the requests the dead host had taken but not answered are
//! handed to the next one again, not failed — without it the kernel ends them with EIO, and a
//! swap-in that fails kills its process (SIGBUS), which the guest's swap-restart scenario
//! showed (`Write-error on swap-device` at the SIGKILL). Every request of a block device is
//! safe to run twice: a write or discard of the same blocks leaves the same contents.

use std::io;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::{BufDescList, UblkDev, UblkIOCtx, UblkQueue};
use libublk::{BufDesc, UblkFlags, UblkIORes, sys};

use super::device::BlockDevice;
use crate::memory::alloc_count::{IoThread, Role};

/// Hardware queues of a device, each with its own thread.
pub const QUEUES: u16 = 2;

/// Requests in flight per queue.
pub const QUEUE_DEPTH: u16 = 64;

/// The largest request, in bytes (the block layer splits larger ones).
pub const MAX_IO_BYTES: u32 = 512 << 10;

/// How long starting a device may take before it is given up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The block device path of ublk device `id`.
pub fn device_path(id: u32) -> String {
    format!("/dev/ublkb{id}")
}

/// Whether ublk device `id` exists and waits for a server to take it over (its server went
/// away with user recovery on).
pub fn awaits_recovery(id: u32) -> bool {
    UblkCtrl::new_simple(id as i32)
        .map(|ctrl| {
            let state = ctrl.dev_info().state as u32;
            state == sys::UBLK_S_DEV_QUIESCED || state == sys::UBLK_S_DEV_FAIL_IO
        })
        .unwrap_or(false)
}

/// Whether ublk device `id` exists in any state (live, or waiting for its server).
pub fn exists(id: u32) -> bool {
    UblkCtrl::new_simple(id as i32).is_ok()
}

/// Deletes ublk device `id` (logged; a device that is already gone is fine).
pub fn delete(id: u32) {
    match UblkCtrl::new_simple(id as i32).and_then(|ctrl| ctrl.del_dev()) {
        Ok(_) => tracing::info!(device = %device_path(id), "ublk device deleted"),
        Err(e) => tracing::warn!(device = %device_path(id), "deleting the ublk device: {e}"),
    }
}

/// A ublk device serving a [`BlockDevice`].
#[derive(Debug)]
pub struct UblkServer {
    id: u32,
    thread: Option<JoinHandle<()>>,
}

impl UblkServer {
    /// Creates ublk device `id` (`None`: the next free number) over `device` and serves it,
    /// or with `recover`, takes over device `id` left by an earlier host process. Returns
    /// once `/dev/ublkbN` is live.
    pub fn start(device: Arc<BlockDevice>, id: Option<u32>, recover: bool) -> io::Result<UblkServer> {
        if !std::path::Path::new("/dev/ublk-control").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "/dev/ublk-control is missing: this kernel has no ublk driver loaded (modprobe ublk_drv; Linux 6.0+)",
            ));
        }
        super::lock_process_memory()?;
        let requested = match (id, recover) {
            (Some(id), true) => {
                let ctrl = UblkCtrl::new_simple(id as i32).map_err(ublk_error)?;
                ctrl.start_user_recover().map_err(ublk_error)?;
                id as i32
            }
            (Some(id), false) => id as i32,
            (None, false) => -1,
            (None, true) => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "recovering a ublk device needs its id"));
            }
        };
        let (started_tx, started) = mpsc::channel::<io::Result<u32>>();
        let thread = std::thread::Builder::new().name(format!("ublk-{}", device.pool().name())).spawn(move || {
            let failed = started_tx.clone();
            if let Err(e) = serve(device, requested, recover, started_tx) {
                let _ = failed.send(Err(e));
            }
        })?;
        let id = started
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the ublk device did not start"))??;
        Ok(UblkServer { id, thread: Some(thread) })
    }

    /// The device number (`/dev/ublkbN`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `/dev/ublkbN`.
    pub fn path(&self) -> String {
        device_path(self.id)
    }

    /// Deletes the device (detach): the kernel fails its pending I/O and the queues stop.
    pub fn delete(mut self) {
        delete(self.id);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn ublk_error(e: libublk::UblkError) -> io::Error {
    io::Error::other(format!("ublk: {e}"))
}

/// Runs the device until it is deleted: the control thread's body.
fn serve(device: Arc<BlockDevice>, id: i32, recover: bool, started: mpsc::Sender<io::Result<u32>>) -> io::Result<()> {
    let ctrl = UblkCtrlBuilder::default()
        .name("tmem")
        .id(id)
        .nr_queues(QUEUES)
        .depth(QUEUE_DEPTH)
        .io_buf_bytes(MAX_IO_BYTES)
        .ctrl_flags(u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE))
        .dev_flags(if recover { UblkFlags::UBLK_DEV_F_RECOVER_DEV } else { UblkFlags::UBLK_DEV_F_ADD_DEV })
        .build()
        .map_err(ublk_error)?;
    let size = device.size();
    let block_shift = device.block_size().trailing_zeros() as u8;
    let block_size = device.block_size();
    let target_init = move |dev: &mut UblkDev| {
        dev.set_default_params(size);
        let params = &mut dev.tgt.params;
        params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
        params.basic.attrs = sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
        params.basic.logical_bs_shift = block_shift;
        params.basic.physical_bs_shift = block_shift;
        params.basic.io_min_shift = block_shift;
        params.basic.io_opt_shift = block_shift;
        params.discard = sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: block_size,
            max_discard_sectors: u32::MAX >> 9,
            max_write_zeroes_sectors: u32::MAX >> 9,
            max_discard_segments: 1,
            reserved0: 0,
        };
        Ok(())
    };
    let queue_device = device.clone();
    let queue = move |qid: u16, dev: &UblkDev| serve_queue(qid, dev, &queue_device);
    let report = started.clone();
    let on_started = move |ctrl: &UblkCtrl| {
        let id = ctrl.dev_info().dev_id;
        tracing::info!(device = %device_path(id), recovered = recover, "ublk device live");
        let _ = report.send(Ok(id));
    };
    ctrl.run_target(target_init, queue, on_started).map_err(ublk_error)?;
    Ok(())
}

/// One hardware queue: its buffers, and requests served in place until the device goes.
fn serve_queue(qid: u16, dev: &UblkDev, device: &BlockDevice) {
    super::become_io_flusher();
    let _io_thread = IoThread::enter(Role::Ublk);
    let buffers = dev.alloc_queue_io_bufs();
    // The kernel copies request data into these buffers (get_user_pages): a buffer page not
    // yet present would be allocated then, under reclaim that waits on this very queue.
    // Locked and populated now, every copy finds its pages.
    for buffer in buffers.iter() {
        let bytes = buffer.as_slice();
        // SAFETY: mlock only pins and populates this queue's own buffer.
        if unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) } != 0 {
            tracing::warn!(queue = qid, "ublk: cannot lock an I/O buffer: {}", std::io::Error::last_os_error());
        }
    }
    let handle = |q: &UblkQueue, tag: u16, _io: &UblkIOCtx| {
        Role::Ublk.count_ops(1);
        let iod = q.get_iod(tag);
        let offset = iod.start_sector << 9;
        let len = u64::from(iod.nr_sectors) << 9;
        let fua = iod.op_flags & sys::UBLK_IO_F_FUA != 0;
        let buffer = &buffers[tag as usize];
        // The data of a read or a write, in place in the tag's buffer. Discards and
        // write-zeroes carry no data and may be far longer than a buffer.
        let data = || {
            if len > u64::from(MAX_IO_BYTES) {
                return None;
            }
            // SAFETY: the kernel hands tag `tag`'s buffer to this thread between the fetch and
            // the commit below, and only this thread serves `tag`: nothing else reads or
            // writes it now. `len` is at most the buffer's size (checked above).
            Some(unsafe { std::slice::from_raw_parts_mut(buffer.as_mut_ptr(), len as usize) })
        };
        let result = match iod.op_flags & 0xff {
            sys::UBLK_IO_OP_READ => data().map(|data| device.read(offset, data).map(|()| len)),
            sys::UBLK_IO_OP_WRITE => data().map(|data| device.write(offset, data, fua).map(|()| len)),
            sys::UBLK_IO_OP_FLUSH => Some(device.flush().map(|()| 0)),
            sys::UBLK_IO_OP_DISCARD => Some(device.discard(offset, len, fua).map(|()| 0)),
            sys::UBLK_IO_OP_WRITE_ZEROES => Some(device.write_zeroes(offset, len, fua).map(|()| 0)),
            _ => return complete(q, tag, buffer, -libc::EOPNOTSUPP),
        };
        let result = match result {
            None => Err(libc::EINVAL),
            Some(done) => done.map_err(|e| e.errno() as i32),
        };
        complete(q, tag, buffer, result.map_or_else(|errno| -errno, |n| n as i32));
    };
    let queue = match UblkQueue::new(qid, dev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&buffers))))
    {
        Ok(queue) => queue,
        Err(e) => {
            tracing::error!(queue = qid, "ublk queue cannot start: {e}");
            return;
        }
    };
    queue.wait_and_handle_io(handle);
}

fn complete(q: &UblkQueue, tag: u16, buffer: &libublk::helpers::IoBuf<u8>, result: i32) {
    if let Err(e) = q.complete_io_cmd_unified(tag, BufDesc::Slice(buffer.as_slice()), Ok(UblkIORes::Result(result))) {
        tracing::error!(tag, "ublk: completing a request: {e}");
    }
}
