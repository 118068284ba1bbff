//! A scope that always cleans up: the async counterpart of a `with` block.

use std::future::Future;
use std::sync::Arc;

use super::{AnyResource, Managed, Resource, ResourceGroup};

/// What a scope cleans up.
enum Target {
    Resource(Arc<dyn AnyResource>),
    Group(Arc<ResourceGroup>),
}

impl Target {
    async fn cleanup(&self) -> anyhow::Result<()> {
        match self {
            Target::Resource(resource) => resource.cleanup().await?,
            Target::Group(group) => group.cleanup().await?,
        }
        Ok(())
    }
}

/// Cleans its target up when dropped without having been finished: covers a scope whose
/// future was cancelled (dropped mid-way), which no code after an `.await` would see.
struct CleanupOnDrop(Option<Target>);

impl CleanupOnDrop {
    async fn finish(mut self) -> anyhow::Result<()> {
        match self.0.take() {
            Some(target) => target.cleanup().await,
            None => Ok(()),
        }
    }
}

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        if let Some(target) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(error) = target.cleanup().await {
                    tracing::warn!("cleanup after a cancelled scope failed: {error:#}");
                }
            });
        }
    }
}

/// Initializes `resource`, runs `body` with it, and cleans it up whatever happens: after
/// success, after an error, and (in a spawned task) when the scope is cancelled.
///
/// The body's error wins over a cleanup error; a cleanup error after a successful body is
/// returned (it is also recorded on the resource).
pub async fn scoped<R, T, F, Fut>(resource: &Arc<Managed<R>>, body: F) -> anyhow::Result<T>
where
    R: Resource,
    F: FnOnce(Arc<Managed<R>>) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let target = Target::Resource(resource.clone());
    run_scope(target, resource.initialize(), || body(resource.clone())).await
}

/// As [`scoped`], for a whole group.
pub async fn scoped_group<T, F, Fut>(group: &Arc<ResourceGroup>, body: F) -> anyhow::Result<T>
where
    F: FnOnce(Arc<ResourceGroup>) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let target = Target::Group(group.clone());
    run_scope(target, group.initialize(), || body(group.clone())).await
}

/// The scope itself: `target` is cleaned up once `initialize` and the body are done (or
/// when the scope is dropped before).
async fn run_scope<T, E, Fut>(
    target: Target,
    initialize: impl Future<Output = Result<(), E>>,
    body: impl FnOnce() -> Fut,
) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let guard = CleanupOnDrop(Some(target));
    let result = match initialize.await {
        Ok(()) => body().await,
        Err(error) => Err(error.into()),
    };
    let cleanup = guard.finish().await;
    let value = result?;
    cleanup?;
    Ok(value)
}
