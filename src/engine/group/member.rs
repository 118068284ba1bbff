//! A member's collective operations over its node's hub: the decoder's all-reduces and
//! the head's gather ([`Collective`]).
//!
//! Two members swap their parts and add them (f32 addition is commutative, so both get
//! the same bits). Three or more run a ring all-reduce: the vector in one chunk per
//! member; k − 1 steps pass partial sums of each chunk round the ring (each member adds
//! its own), after which each chunk's sum lies complete on one member; k − 1 more steps
//! pass the sums round, so every member ends with every chunk, bit for bit the same. Each
//! chunk is added in a fixed order (round the ring from its first member), whatever the
//! timing. Every member sends about 2(k − 1)/k of the vector per all-reduce, whatever k.

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::bail;

use super::batch::{BatchId, WireDtype};
use super::frame::Frame;
use super::hub::GroupHub;
use crate::engine::model::collective::Collective;

/// One member's collectives during one batch.
pub struct MemberCollective<'a> {
    hub: &'a GroupHub,
    batch: &'a BatchId,
    members: &'a [String],
    me: usize,
    dtype: WireDtype,
    /// Steps used so far: every member numbers its sends the same way.
    op: u32,
}

impl<'a> MemberCollective<'a> {
    pub fn new(
        hub: &'a GroupHub,
        batch: &'a BatchId,
        members: &'a [String],
        me: usize,
        dtype: WireDtype,
    ) -> Self {
        MemberCollective {
            hub,
            batch,
            members,
            me,
            dtype,
            op: 0,
        }
    }

    /// Sends `values` (rounded first, in place, to what the wire carries) as step `op`.
    fn send(&self, to: usize, op: u32, values: &mut [f32]) -> anyhow::Result<()> {
        if self.dtype == WireDtype::F16 {
            for v in values.iter_mut() {
                *v = half::f16::from_f32(*v).to_f32();
            }
        }
        self.hub.send(
            &self.members[to],
            Frame::Part {
                batch: self.batch.clone(),
                op,
                values: values.to_vec(),
                dtype: self.dtype,
            },
        )
    }

    fn receive(&self, from: usize, op: u32, len: usize) -> anyhow::Result<Vec<f32>> {
        let values = self.hub.receive(self.batch, op, &self.members[from])?;
        if values.len() != len {
            bail!(
                "member {} sent {} values for step {op} of batch {}; {len} expected",
                self.members[from],
                values.len(),
                self.batch
            );
        }
        Ok(values)
    }

    fn pair(&mut self, values: &mut [f32]) -> anyhow::Result<()> {
        let other = 1 - self.me;
        let op = self.op;
        self.op += 1;
        self.send(other, op, values)?;
        let theirs = self.receive(other, op, values.len())?;
        for (v, t) in values.iter_mut().zip(theirs) {
            *v += t;
        }
        Ok(())
    }

    fn ring(&mut self, values: &mut [f32]) -> anyhow::Result<()> {
        let k = self.members.len();
        let n = values.len();
        let chunk = |c: usize| c * n / k..(c + 1) * n / k;
        let (next, previous) = ((self.me + 1) % k, (self.me + k - 1) % k);
        // Reduce-scatter: after step s, this member holds the sum of s + 2 parts of chunk
        // me − s − 1.
        for s in 0..k - 1 {
            let op = self.op;
            self.op += 1;
            let out = chunk((self.me + k - s) % k);
            self.send(next, op, &mut values[out])?;
            let into = chunk((self.me + 2 * k - s - 1) % k);
            let received = self.receive(previous, op, into.len())?;
            for (v, r) in values[into].iter_mut().zip(received) {
                *v += r;
            }
        }
        // All-gather: the complete chunk me + 1 goes round.
        for s in 0..k - 1 {
            let op = self.op;
            self.op += 1;
            let out = chunk((self.me + 1 + k - s) % k);
            self.send(next, op, &mut values[out])?;
            let into = chunk((self.me + k - s) % k);
            let received = self.receive(previous, op, into.len())?;
            values[into].copy_from_slice(&received);
        }
        Ok(())
    }

    fn record(&self, started: Instant) {
        self.hub
            .stats
            .collective_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

impl Collective for MemberCollective<'_> {
    fn all_reduce(&mut self, values: &mut [f32]) -> anyhow::Result<()> {
        self.hub.stats.all_reduces.fetch_add(1, Ordering::Relaxed);
        match self.members.len() {
            0 | 1 => Ok(()),
            2 => {
                let started = Instant::now();
                let out = self.pair(values);
                self.record(started);
                out
            }
            _ => {
                let started = Instant::now();
                let out = self.ring(values);
                self.record(started);
                out
            }
        }
    }

    fn gather(&mut self, part: Vec<f32>) -> anyhow::Result<Option<Vec<Vec<f32>>>> {
        self.hub.stats.gathers.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let op = self.op;
        self.op += 1;
        let out = if self.me != 0 {
            // Logits travel exact, whatever the wire's dtype: they decide the token.
            let frame = Frame::Part {
                batch: self.batch.clone(),
                op,
                values: part,
                dtype: WireDtype::F32,
            };
            self.hub.send(&self.members[0], frame).map(|()| None)
        } else {
            let mut parts = vec![part];
            for from in 1..self.members.len() {
                match self.hub.receive(self.batch, op, &self.members[from]) {
                    Ok(values) => parts.push(values),
                    Err(error) => {
                        self.record(started);
                        return Err(error);
                    }
                }
            }
            Ok(Some(parts))
        };
        self.record(started);
        out
    }
}
