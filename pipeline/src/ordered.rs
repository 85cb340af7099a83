//! Parallel map with in-order, streaming consumption: `workers` threads compute `f(item)` while
//! the calling thread consumes results strictly in input order. Workers never run more than
//! `window` items ahead of the consumer, so memory stays bounded whatever the input size, and
//! the consumer's output does not depend on thread timing.

use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};

struct Gate {
    next: usize,
    consumed: usize,
    stop: bool,
}

pub fn ordered_map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    window: usize,
    f: impl Fn(&T) -> R + Sync,
    mut consume: impl FnMut(usize, R) -> Result<()>,
) -> Result<()> {
    let window = window.max(1);
    let gate = Mutex::new(Gate { next: 0, consumed: 0, stop: false });
    let advanced = Condvar::new();
    let (tx, rx) = crossbeam_channel::bounded::<(usize, R)>(window);
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            let tx = tx.clone();
            let (gate, advanced, f) = (&gate, &advanced, &f);
            scope.spawn(move || {
                loop {
                    let i = {
                        let mut g = gate.lock().expect("ordered_map gate");
                        while !g.stop && g.next < items.len() && g.next >= g.consumed + window {
                            g = advanced.wait(g).expect("ordered_map gate");
                        }
                        if g.stop || g.next >= items.len() {
                            return;
                        }
                        g.next += 1;
                        g.next - 1
                    };
                    if tx.send((i, f(&items[i]))).is_err() {
                        return; // consumer gave up
                    }
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let result = (|| {
            let mut expected = 0;
            while expected < items.len() {
                let (i, r) = rx.recv().expect("a worker ended before sending its item");
                pending.insert(i, r);
                while let Some(r) = pending.remove(&expected) {
                    consume(expected, r)?;
                    expected += 1;
                    gate.lock().expect("ordered_map gate").consumed = expected;
                    advanced.notify_all();
                }
            }
            Ok(())
        })();
        // On error, release waiting workers and make their sends fail so the scope can end.
        gate.lock().expect("ordered_map gate").stop = true;
        advanced.notify_all();
        drop(rx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_order_whatever_the_timing() {
        let items: Vec<u64> = (0..200).collect();
        let mut seen = Vec::new();
        ordered_map(
            &items,
            4,
            8,
            |&x| {
                std::thread::sleep(std::time::Duration::from_micros((x * 7919) % 300));
                x * x
            },
            |i, r| {
                seen.push((i, r));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, items.iter().map(|&x| (x as usize, x * x)).collect::<Vec<_>>());
    }

    #[test]
    fn a_consumer_error_stops_the_workers() {
        let items: Vec<u32> = (0..10_000).collect();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let err = ordered_map(
            &items,
            3,
            4,
            |_| calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            |i, _| if i == 5 { anyhow::bail!("stop at 5") } else { Ok(()) },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "stop at 5");
        assert!(calls.into_inner() < 100);
    }
}
