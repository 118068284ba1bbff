//! Latency of one tensor-parallel all-reduce of a 1536-float vector (a 1.5B model's
//! hidden size), between members in one process joined by in-process calls or by TCP
//! links on loopback (`exo::peer::GroupLinks`, plain and mutual TLS as in a keyed
//! cluster), f32 and f16 on the wire, 2 and 3 members.
//!
//!   cargo bench --bench all_reduce
//!
//! Prints the median and the 10th/90th percentiles of the leader's time per all-reduce
//! (every member calls it at once, as the decoder does twice per layer).

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use exo::engine::group::local_wire::local_hubs;
use exo::engine::group::{BatchId, GroupHub, MemberCollective, WireDtype};
use exo::engine::model::collective::Collective;
use exo::peer::{loopback_hubs, loopback_hubs_with};
use exo::trust::{ClusterKey, NodeTls};

const WIDTH: usize = 1536;
const ROUNDS: usize = 2000;

/// Every member all-reduces ROUNDS vectors; the leader's time per all-reduce.
fn run(hubs: &[Arc<GroupHub>], names: &[String], dtype: WireDtype) -> Vec<Duration> {
    let batch = BatchId {
        leader: names[0].clone(),
        seq: 1,
    };
    let start = Arc::new(Barrier::new(hubs.len()));
    let threads: Vec<_> = hubs
        .iter()
        .enumerate()
        .map(|(me, hub)| {
            let (hub, names, batch, start) =
                (hub.clone(), names.to_vec(), batch.clone(), start.clone());
            std::thread::spawn(move || {
                let mut group = MemberCollective::new(&hub, &batch, &names, me, dtype);
                let mut values = vec![0.0f32; WIDTH];
                let mut times = Vec::with_capacity(ROUNDS);
                start.wait();
                for round in 0..ROUNDS {
                    for (i, v) in values.iter_mut().enumerate() {
                        *v = ((i + round + me) % 97) as f32 * 0.01;
                    }
                    let began = Instant::now();
                    group.all_reduce(&mut values).unwrap();
                    times.push(began.elapsed());
                }
                hub.close(&batch);
                times
            })
        })
        .collect();
    let mut all: Vec<Vec<Duration>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    all.swap_remove(0)
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "{what:<40} median {:>8.1} µs   p10 {:>8.1} µs   p90 {:>8.1} µs",
        at(0.5),
        at(0.1),
        at(0.9)
    );
}

fn main() {
    for members in [2usize, 3] {
        let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
        let hubs = local_hubs(&names);
        report(
            &format!("{members} members, in process, f32"),
            run(&hubs, &names, WireDtype::F32),
        );
        for dtype in [WireDtype::F32, WireDtype::F16] {
            let mesh = loopback_hubs(&names).unwrap();
            report(
                &format!("{members} members, TCP loopback, {}", dtype.name()),
                run(&mesh.hubs, &names, dtype),
            );
        }
        let key = ClusterKey::generate();
        let tls = (0..members).map(|_| NodeTls::new(&key).unwrap()).collect();
        let mesh = loopback_hubs_with(&names, Some(tls)).unwrap();
        report(
            &format!("{members} members, TLS loopback, f32"),
            run(&mesh.hubs, &names, WireDtype::F32),
        );
    }
}
