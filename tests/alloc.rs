//! No allocation on the echo path in the steady state: a counting allocator
//! counts allocations made by the server's thread while clients echo.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use common::*;
use echoloop::Config;

/// Counts allocations made on threads that opted in, each test into its
/// own counter (the tests run in parallel in one process).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static TWO_LOOP_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static UDP_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static TRACKED: Cell<Option<&'static AtomicU64>> = const { Cell::new(None) };
}

fn count_one() {
    if let Some(counter) = TRACKED.with(Cell::get) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: defers to the system allocator; only adds a counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `server` on this thread until `stop` (bounded at 60 s), counting
/// this thread's allocations into `counter` and publishing its
/// `closed_by_peer` after each turn; returns its counters.
fn serve_counted(
    server: &mut echoloop::EchoServer,
    poll: &mut Poll,
    counter: &'static AtomicU64,
    stop: &AtomicBool,
    probe_tx: &std::sync::mpsc::Sender<u64>,
    closed: &AtomicU64,
) -> echoloop::Stats {
    let mut events = Events::with_capacity(256);
    TRACKED.with(|t| t.set(Some(counter)));
    // Prove the counter sees this thread's allocations, whatever the
    // timing of the warm-up that follows (which may make none).
    drop(std::hint::black_box(Box::new([0u8; 32])));
    probe_tx.send(counter.load(Ordering::Relaxed)).unwrap();
    let give_up = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
        host_turn(server, poll, &mut events, Duration::from_millis(10));
        closed.store(server.stats().closed_by_peer, Ordering::Relaxed);
    }
    TRACKED.with(|t| t.set(None));
    server.stats()
}

#[test]
fn the_echo_path_does_not_allocate_in_the_steady_state() {
    let mut poll = Poll::new().unwrap();
    let mut config = Config::default();
    config.max_pending = 16 * 1024;
    let (mut server, addr) = embedded_server(&poll, config);
    let stop = Arc::new(AtomicBool::new(false));
    let host_stop = stop.clone();
    let (probe_tx, probe_rx) = std::sync::mpsc::channel();
    let closed = Arc::new(AtomicU64::new(0));
    let host_closed = closed.clone();
    let host = thread::spawn(move || {
        serve_counted(
            &mut server,
            &mut poll,
            &ALLOCATIONS,
            &host_stop,
            &probe_tx,
            &host_closed,
        )
    });

    let probed = probe_rx.recv().unwrap();
    let mut clients: Vec<_> = (0..20).map(|_| connect(addr)).collect();
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let exchange = |clients: &mut Vec<std::net::TcpStream>, rounds: usize, back: &mut [u8; 64]| {
        for _ in 0..rounds {
            for c in clients.iter_mut() {
                c.write_all(&msg).unwrap();
            }
            for c in clients.iter_mut() {
                c.read_exact(back).unwrap();
                assert_eq!(*back, msg);
            }
        }
    };
    // Bulk streams that overrun the socket buffers exercise the pending
    // buffers and their pool.
    let bulk = |seed: u64| {
        let got = echo_verified(connect(addr), seed, 8 << 20, &[200_000]);
        assert_eq!(got, 8 << 20);
    };
    // Warm up: accepts, slab growth, the pending-buffer pool.
    exchange(&mut clients, 200, &mut back);
    bulk(1);
    bulk(2);
    // The server has closed both bulk connections (their close returns
    // buffers to the pool): that work is warm-up too, however late a
    // starved server thread does it.
    let deadline = Instant::now() + IO_TIMEOUT;
    while closed.load(Ordering::Relaxed) < 2 {
        assert!(
            Instant::now() < deadline,
            "the bulk connections never closed"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    exchange(&mut clients, 2000, &mut back);
    let after_ping = ALLOCATIONS.load(Ordering::Relaxed);
    bulk(3);
    let after_bulk = ALLOCATIONS.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let stats = host.join().unwrap();
    assert!(stats.bytes_out > 40_000 * 64);
    // The counter works: the deliberate allocation on the server's thread
    // was counted. (Whether warming up allocated depends on timing, so it
    // proves nothing either way.)
    assert!(probed > 0, "the counting allocator saw nothing");
    assert_eq!(
        after_ping - before,
        0,
        "allocations during 40,000 ping-pong echoes"
    );
    // A new connection costs its accept; the echo itself reuses pooled buffers.
    assert!(
        after_bulk - after_ping <= 4,
        "{} allocations while echoing 8 MiB on one new connection",
        after_bulk - after_ping
    );
}

/// Two servers on two threads behind one port (a `listener_group`),
/// sharing one `SharedLimits`, as `--threads 2` runs them: neither thread
/// allocates while echoing. (That the shared limits are touched only when a
/// connection is admitted or closed is a unit test of `server/mod.rs`.)
#[test]
fn two_loops_do_not_allocate_per_message() {
    use echoloop::{listener_group, EchoServer, SharedLimits};

    let config = Config::default();
    let limits = SharedLimits::new(&config);
    let group = listener_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = group[0].local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (probe_tx, probe_rx) = std::sync::mpsc::channel();
    let hosts: Vec<_> = group
        .into_iter()
        .map(|listener| {
            let (limits, config) = (limits.clone(), config.clone());
            let stop = stop.clone();
            let probe_tx = probe_tx.clone();
            thread::spawn(move || {
                let mut poll = Poll::new().unwrap();
                let mut server =
                    EchoServer::with_shared_limits(config, mio::Token(0), &limits).unwrap();
                server.adopt(listener).unwrap();
                server.register(poll.registry()).unwrap();
                serve_counted(
                    &mut server,
                    &mut poll,
                    &TWO_LOOP_ALLOCATIONS,
                    &stop,
                    &probe_tx,
                    &AtomicU64::new(0),
                )
            })
        })
        .collect();
    let probed: Vec<u64> = (0..2).map(|_| probe_rx.recv().unwrap()).collect();
    let mut clients: Vec<_> = (0..40).map(|_| connect(addr)).collect();
    let msg = [9u8; 64];
    let mut back = [0u8; 64];
    let mut exchange = |clients: &mut Vec<std::net::TcpStream>, rounds: usize| {
        for _ in 0..rounds {
            for c in clients.iter_mut() {
                c.write_all(&msg).unwrap();
            }
            for c in clients.iter_mut() {
                c.read_exact(&mut back).unwrap();
                assert_eq!(back, msg);
            }
        }
    };
    exchange(&mut clients, 100); // warm-up: accepts, slab pages
    thread::sleep(Duration::from_millis(100));
    let allocations = || TWO_LOOP_ALLOCATIONS.load(Ordering::Relaxed);
    let allocs_before = allocations();
    exchange(&mut clients, 1000);
    let allocs_after = allocations();
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(20);
    while limits.active() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let stats: Vec<_> = hosts.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        probed.iter().all(|&p| p > 0),
        "the counting allocator saw nothing"
    );
    assert!(
        stats.iter().all(|s| s.accepted > 0),
        "one loop got no connection: {stats:?}"
    );
    assert_eq!(
        allocs_after - allocs_before,
        0,
        "allocations during 40,000 echoes"
    );
    let total = stats[0] + stats[1];
    assert_eq!((total.accepted, limits.active()), (40, 0));
}

/// No allocation per datagram in the steady state, with the rate limit on
/// (high enough never to refuse here) so its path is measured too.
#[test]
fn no_allocation_per_datagram_in_the_steady_state() {
    let mut poll = Poll::new().unwrap();
    let mut config = Config::default();
    config.udp_rate_limit = Some(10_000_000);
    let mut server = echoloop::EchoServer::new(config, mio::Token(0)).unwrap();
    let addr = server.bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    server.register(poll.registry()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let host_stop = stop.clone();
    let (probe_tx, probe_rx) = std::sync::mpsc::channel();
    let host = thread::spawn(move || {
        serve_counted(
            &mut server,
            &mut poll,
            &UDP_ALLOCATIONS,
            &host_stop,
            &probe_tx,
            &AtomicU64::new(0),
        )
    });
    let probed = probe_rx.recv().unwrap();
    let clients: Vec<std::net::UdpSocket> = (0..8).map(|_| udp_client_for(addr)).collect();
    let mut buf = vec![0u8; 65_536];
    let msgs: Vec<Vec<u8>> = [0usize, 1, 64, 1500, 65_507]
        .iter()
        .map(|&n| vec![0xa5; n])
        .collect();
    let mut exchange = |rounds: usize| {
        for r in 0..rounds {
            for c in &clients {
                let msg = &msgs[r % msgs.len()];
                assert_eq!(udp_round_trip(c, addr, msg, &mut buf), msg.len());
            }
        }
    };
    exchange(50); // warm-up
    thread::sleep(Duration::from_millis(50));
    let before = UDP_ALLOCATIONS.load(Ordering::Relaxed);
    exchange(500);
    let after = UDP_ALLOCATIONS.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let stats = host.join().unwrap();
    assert!(probed > 0, "the counting allocator saw nothing");
    assert_eq!(stats.udp_datagrams_out, 550 * 8);
    assert_eq!(
        after - before,
        0,
        "allocations while echoing 4,000 datagrams"
    );
}
