//! Strict Ed25519 verification with libsodium's rules, for steward-audit (audit/native_ed25519.py).
//!
//! The rules (those of `crypto_sign_verify_detached` in libsodium 1.0.18 and later), as steps:
//! 1. the public key A is a canonical encoding (y < p), decodes to a point, and that point is
//!    not of small order (decoded once per key and batch: `Key`);
//! 2. S is canonical (S < L);
//! 3. k = SHA-512(R || A || M) mod L, and R' = [S]B - [k]A (RFC 8032 §5.1.7, cofactorless);
//! 4. R' encodes to exactly the 32 bytes of R;
//! 5. R is not of small order. libsodium looks R's encoding up in a list; here, R' already
//!    equals R byte for byte, so R' is tested as a point, which refuses the same encodings
//!    (every encoding of a small-order point either is canonical, and then equals R' only if
//!    R' is that point, or is not, and then never equals R').
//! R is never decoded (libsodium does not decode it either), which saves a square root per
//! signature against ed25519-dalek's `verify_strict`. tests/unit/test_ed25519_native.py holds
//! all of it to libsodium case by case: small-order and mixed-order keys, non-canonical S, A
//! and R, one flipped bit anywhere, whole batches.
//!
//! Speed (docs/AUDIT.md "Speed"): built for a CPU with AVX-512 IFMA, curve25519-dalek 5 does
//! the double-base multiplication with it; 25.5 µs per signature in a batch against 58 µs for
//! libsodium here (2026-12-07, five alternating rounds, 0.38-0.45×).
//!
//! Entry points take raw pointers from ctypes, which releases the interpreter lock for the
//! length of a call, so threads verify in parallel. Nothing is allocated per signature.

use std::collections::HashMap;
use std::os::raw::c_int;
use std::slice;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};

const KEY: usize = 32;
const SIG: usize = 64;
/// Verdict bytes, shared with audit/signatures.py.
const FALSE: u8 = 0;
const TRUE: u8 = 1;

/// y < p = 2^255 - 19, the top (sign) bit ignored: libsodium's `ge25519_is_canonical`.
fn canonical_y(enc: &[u8; KEY]) -> bool {
    // y >= p only when bits 8..254 are all ones and the low byte is >= 0xed (237).
    if enc[31] & 0x7f != 0x7f {
        return true;
    }
    if enc[1..31].iter().any(|&b| b != 0xff) {
        return true;
    }
    enc[0] < 0xed
}

/// A public key that passed step 1: its bytes (hashed in step 3) and -A (used in step 3).
struct Key {
    enc: [u8; KEY],
    minus_a: EdwardsPoint,
}

fn key_of(enc: &[u8; KEY]) -> Option<Key> {
    if !canonical_y(enc) {
        return None;
    }
    let a = CompressedEdwardsY(*enc).decompress()?;
    if a.is_small_order() {
        return None;
    }
    Some(Key { enc: *enc, minus_a: -a })
}

/// Steps 2-5 for a message given in two parts (prefix, rest), hashed without a copy.
fn verify_parts(key: &Key, sig: &[u8; SIG], prefix: &[u8], rest: &[u8]) -> bool {
    let r: &[u8; 32] = sig[..32].try_into().unwrap();
    let s_bytes: [u8; 32] = sig[32..].try_into().unwrap();
    let s: Option<Scalar> = Scalar::from_canonical_bytes(s_bytes).into();
    let Some(s) = s else { return false };
    let mut h = Sha512::new();
    h.update(r);
    h.update(key.enc);
    h.update(prefix);
    h.update(rest);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let r_prime = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &key.minus_a, &s);
    r_prime.compress().as_bytes() == r && !r_prime.is_small_order()
}

/// 1 when `sig` (64 bytes) is `pk`'s (32 bytes) valid signature over `msg[..msg_len]`, else 0.
///
/// # Safety
/// `pk`, `sig` and `msg` point to at least 32, 64 and `msg_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn steward_ed25519_verify(
    pk: *const u8,
    sig: *const u8,
    msg: *const u8,
    msg_len: usize,
) -> i32 {
    let pk = &*(pk as *const [u8; KEY]);
    let sig = &*(sig as *const [u8; SIG]);
    let msg = if msg_len == 0 { &[][..] } else { slice::from_raw_parts(msg, msg_len) };
    match key_of(pk) {
        Some(key) => verify_parts(&key, sig, msg, &[]) as i32,
        None => 0,
    }
}

/// A batch as the caller lays it out (see `steward_ed25519_verify_bodies`): raw pointers into
/// buffers the caller keeps alive, unchanged, until the batch is done.
#[derive(Clone, Copy)]
struct Batch {
    prefix: *const u8,
    prefix_len: usize,
    skip: usize,
    bodies: *const u8,
    ends: *const u64,
    counts: *const u32,
    n_bodies: usize,
    pubs: *const u8,
    sigs: *const u8,
    verdicts: *mut u8,
    n_sigs: usize,
}

// A batch moves to a pool thread; the caller's promise (buffers alive and untouched until
// the ticket is waited for) is what makes that sound. audit/native_ed25519.py keeps it.
unsafe impl Send for Batch {}

unsafe fn verify_batch(b: Batch) -> i32 {
    let ends = if b.n_bodies == 0 { &[][..] } else { slice::from_raw_parts(b.ends, b.n_bodies) };
    let counts =
        if b.n_bodies == 0 { &[][..] } else { slice::from_raw_parts(b.counts, b.n_bodies) };
    if counts.iter().map(|&c| c as usize).sum::<usize>() != b.n_sigs {
        return -1;
    }
    let mut start = 0u64;
    for &end in ends {
        if end < start {
            return -1;
        }
        start = end;
    }
    if b.n_sigs == 0 {
        return 0;
    }
    let total = start as usize;
    let bodies = if total == 0 { &[][..] } else { slice::from_raw_parts(b.bodies, total) };
    let prefix =
        if b.prefix_len == 0 { &[][..] } else { slice::from_raw_parts(b.prefix, b.prefix_len) };
    let pubs = slice::from_raw_parts(b.pubs, b.n_sigs * KEY);
    let sigs = slice::from_raw_parts(b.sigs, b.n_sigs * SIG);
    let verdicts = slice::from_raw_parts_mut(b.verdicts, b.n_sigs);
    let skip = b.skip;

    let mut keys: HashMap<[u8; KEY], Option<Key>> = HashMap::new();
    let (mut i, mut start) = (0usize, 0usize);
    for (&end, &count) in ends.iter().zip(counts) {
        let end = end as usize;
        // A body shorter than `skip` gives the prefix alone, as Python's body[skip:] does.
        let rest = &bodies[(start + skip).min(end)..end];
        start = end;
        for _ in 0..count {
            if verdicts[i] == TRUE {
                let pk: [u8; KEY] = pubs[i * KEY..(i + 1) * KEY].try_into().unwrap();
                let sig: &[u8; SIG] = sigs[i * SIG..(i + 1) * SIG].try_into().unwrap();
                let key = keys.entry(pk).or_insert_with(|| key_of(&pk));
                verdicts[i] = match key {
                    Some(key) if verify_parts(key, sig, prefix, rest) => TRUE,
                    _ => FALSE,
                };
            }
            i += 1;
        }
    }
    0
}

/// Verifies a batch of signatures over messages `prefix || body[skip..]`, one body per entry.
///
/// Entry i's body is `bodies[ends[i-1]..ends[i]]` (ends[-1] = 0) and carries `counts[i]`
/// signatures, taken in order from `pubs` (32 bytes each) and `sigs` (64 bytes each).
/// `verdicts` (one byte per signature) is read and written: only a signature whose byte is 1
/// on entry is checked, and its byte becomes 1 (valid) or 0; every other byte is left as it
/// is (the caller marks a missing key or a wrong size there). Keys are decoded once per call.
/// Returns 0, or -1 (and checks nothing) when the counts, ends and sizes disagree.
///
/// # Safety
/// Each pointer points to the number of readable (writable, for `verdicts`) bytes or items
/// its description implies: `prefix_len`, `ends[n_bodies - 1]`, `n_bodies` ends and counts,
/// and 32, 64 and 1 bytes per signature for `n_sigs` signatures.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn steward_ed25519_verify_bodies(
    prefix: *const u8,
    prefix_len: usize,
    skip: usize,
    bodies: *const u8,
    ends: *const u64,
    counts: *const u32,
    n_bodies: usize,
    pubs: *const u8,
    sigs: *const u8,
    verdicts: *mut u8,
    n_sigs: usize,
) -> i32 {
    verify_batch(Batch {
        prefix, prefix_len, skip, bodies, ends, counts, n_bodies, pubs, sigs, verdicts, n_sigs,
    })
}

// --- A pool of verifying threads that never touch the interpreter lock ------------------------
//
// Python worker threads calling steward_ed25519_verify_bodies each need the interpreter lock
// to pick a task up and to hand its answer back, and waited up to the switch interval (5 ms)
// for it each time while the main thread decoded: with 2 workers the main thread's per-entry
// cost grew from 27-28 µs alone to 37-40 µs (2026-12-07). Threads of this pool are handed a
// batch by one call and signal a ticket when done; only the caller's wait takes the lock back.

/// The result of a submitted batch: set once by the pool thread, read once by the waiter.
pub struct Ticket {
    status: Mutex<Option<i32>>,
    done: Condvar,
}

struct Job {
    batch: Batch,
    ticket: Arc<Ticket>,
}

/// Verifying threads fed through a channel, in submission order.
pub struct Pool {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<thread::JoinHandle<()>>,
}

extern "C" {
    // glibc's nice(): on Linux it changes the calling thread's priority only.
    fn nice(inc: c_int) -> c_int;
}

/// A pool of `threads` verifying threads (at least 1), each lowered by `nice_inc` so that the
/// caller's thread, the pipeline's serial stage, keeps its core. Free it with
/// `steward_ed25519_pool_free`; null if a thread could not be started.
#[no_mangle]
pub extern "C" fn steward_ed25519_pool_new(threads: usize, nice_inc: c_int) -> *mut Pool {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::new();
    for n in 0..threads.max(1) {
        let rx = Arc::clone(&rx);
        let spawned = thread::Builder::new().name(format!("ed25519-{n}")).spawn(move || {
            if nice_inc != 0 {
                unsafe { nice(nice_inc) };
            }
            loop {
                let job = match rx.lock() {
                    Ok(jobs) => jobs.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                let status = unsafe { verify_batch(job.batch) };
                if let Ok(mut slot) = job.ticket.status.lock() {
                    *slot = Some(status);
                }
                job.ticket.done.notify_all();
            }
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(_) => {
                drop(tx);
                for h in handles {
                    let _ = h.join();
                }
                return std::ptr::null_mut();
            }
        }
    }
    Box::into_raw(Box::new(Pool { jobs: Some(tx), threads: handles }))
}

/// Hands a batch (as for `steward_ed25519_verify_bodies`) to the pool; returns its ticket,
/// which must be waited for exactly once, or null if the pool is shutting down.
///
/// # Safety
/// `pool` came from `steward_ed25519_pool_new` and is not freed; the batch's buffers stay
/// alive and unchanged until `steward_ed25519_ticket_wait` on the returned ticket returns.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn steward_ed25519_pool_submit(
    pool: *mut Pool,
    prefix: *const u8,
    prefix_len: usize,
    skip: usize,
    bodies: *const u8,
    ends: *const u64,
    counts: *const u32,
    n_bodies: usize,
    pubs: *const u8,
    sigs: *const u8,
    verdicts: *mut u8,
    n_sigs: usize,
) -> *const Ticket {
    let pool = &*pool;
    let ticket = Arc::new(Ticket { status: Mutex::new(None), done: Condvar::new() });
    let batch = Batch {
        prefix, prefix_len, skip, bodies, ends, counts, n_bodies, pubs, sigs, verdicts, n_sigs,
    };
    let Some(jobs) = pool.jobs.as_ref() else { return std::ptr::null() };
    if jobs.send(Job { batch, ticket: Arc::clone(&ticket) }).is_err() {
        return std::ptr::null();
    }
    Arc::into_raw(ticket)
}

/// Blocks until the ticket's batch is done; its status (0, or -1 as for
/// `steward_ed25519_verify_bodies`). Consumes the ticket.
///
/// # Safety
/// `ticket` came from `steward_ed25519_pool_submit` and was not waited for before.
#[no_mangle]
pub unsafe extern "C" fn steward_ed25519_ticket_wait(ticket: *const Ticket) -> i32 {
    let ticket = Arc::from_raw(ticket);
    let Ok(mut slot) = ticket.status.lock() else { return -2 };
    loop {
        if let Some(status) = *slot {
            return status;
        }
        slot = match ticket.done.wait(slot) {
            Ok(slot) => slot,
            Err(_) => return -2,
        };
    }
}

/// Stops the pool's threads once the batches already handed over are done, and frees it.
///
/// # Safety
/// `pool` came from `steward_ed25519_pool_new` and is freed once.
#[no_mangle]
pub unsafe extern "C" fn steward_ed25519_pool_free(pool: *mut Pool) {
    let mut pool = Box::from_raw(pool);
    pool.jobs = None; // closes the channel: each thread ends after the jobs queued before
    for handle in pool.threads.drain(..) {
        let _ = handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_y;

    #[test]
    fn canonical_y_is_below_p() {
        let mut p = [0xffu8; 32];
        p[31] = 0x7f;
        p[0] = 0xed; // p itself
        assert!(!canonical_y(&p));
        p[0] = 0xec; // p - 1
        assert!(canonical_y(&p));
        p[0] = 0xff; // 2^255 - 1
        assert!(!canonical_y(&p));
        p[31] = 0xff; // the sign bit does not count
        assert!(!canonical_y(&p));
    }
}
