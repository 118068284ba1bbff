//! The last shard's grammar matchers, one per constrained request: built from the grammar
//! an epoch's first sampled step carries (replaying the tokens generated before a
//! re-plan), used to mask each sampled row's logits, dropped when the request ends here.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::engine::LoadedModel;
use crate::engine::text::constraint::Constrained;
use crate::proto::ValidatedContext;

#[derive(Default)]
pub(super) struct Constraints {
    matchers: Mutex<HashMap<String, Constrained>>,
}

impl Constraints {
    /// A step of a constrained request arrives at the node that samples it: when it
    /// carries the grammar, a fresh matcher replaces any older one. Err says why the
    /// grammar cannot be used.
    pub(super) fn arrived(
        &self,
        model: &LoadedModel,
        context: &ValidatedContext,
    ) -> anyhow::Result<()> {
        let samples_here = context.index + 1 == context.plan.entries.len();
        let Some(spec) = context.constraint.as_ref().filter(|_| samples_here) else {
            return Ok(());
        };
        let Some(grammar) = spec.grammar.as_deref() else {
            return Ok(());
        };
        let mut matcher = model.grammars()?.matcher(grammar)?;
        matcher.replay(&spec.generated)?;
        self.lock().insert(context.request_id.clone(), matcher);
        Ok(())
    }

    /// Masks the logits of a sampled step of `context` (nothing for an unconstrained
    /// request).
    pub(super) fn mask(
        &self,
        context: &ValidatedContext,
        logits: &mut [f32],
    ) -> anyhow::Result<()> {
        if context.constraint.is_none() {
            return Ok(());
        }
        match self.lock().get_mut(&context.request_id) {
            Some(matcher) => matcher.mask(logits),
            None => anyhow::bail!(
                "request {} is constrained, but this node holds no grammar for it",
                context.request_id
            ),
        }
    }

    /// `token` was sampled for `context`: its matcher moves past it.
    pub(super) fn accept(&self, context: &ValidatedContext, token: u32) -> anyhow::Result<()> {
        if context.constraint.is_none() {
            return Ok(());
        }
        match self.lock().get_mut(&context.request_id) {
            Some(matcher) => matcher.accept(token),
            None => Ok(()),
        }
    }

    pub(super) fn forget(&self, request_id: &str) {
        self.lock().remove(request_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Constrained>> {
        self.matchers.lock().unwrap_or_else(|p| p.into_inner())
    }
}
