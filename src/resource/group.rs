//! `ResourceGroup`: named members started in dependency order and stopped in reverse.

use std::sync::Arc;

use futures::future::join_all;

use super::{AnyResource, Managed, Resource, ResourceError};

/// Why a group call failed. Every variant names the group and the member concerned.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("group '{group}' already has a member named '{member}'")]
    DuplicateMember { group: String, member: String },
    #[error(
        "group '{group}': member '{member}' depends on '{dependency}', which is not in the group \
         (add a member after the members it depends on)"
    )]
    UnknownDependency {
        group: String,
        member: String,
        dependency: String,
    },
    #[error("group '{group}': member '{member}' failed to initialize: {error}; every member was cleaned up{}", rollback_note(.rollback_failures))]
    MemberFailed {
        group: String,
        member: String,
        error: Box<ResourceError>,
        /// Cleanup errors met while rolling back (the members are Closed all the same).
        rollback_failures: Vec<(String, ResourceError)>,
    },
    #[error("group '{group}': cleanup failed for {}", describe(.failures))]
    CleanupFailed {
        group: String,
        failures: Vec<(String, ResourceError)>,
    },
}

fn describe(failures: &[(String, ResourceError)]) -> String {
    failures
        .iter()
        .map(|(member, error)| format!("'{member}' ({error})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rollback_note(failures: &[(String, ResourceError)]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!(" (with errors: {})", describe(failures))
    }
}

struct Member {
    name: String,
    resource: Arc<dyn AnyResource>,
    /// Length of the longest dependency chain below this member: members of one level
    /// depend only on lower levels, so a level starts all at once.
    level: usize,
}

/// The resources of one node (or any unit that starts and stops together).
///
/// - members are added after the members they depend on, so a cycle cannot be built;
/// - `initialize` starts each dependency level concurrently, level after level; if a member
///   fails, every member is cleaned up (in reverse order) and the error names the member;
/// - `cleanup` stops members in the reverse of their start order, one at a time.
pub struct ResourceGroup {
    name: String,
    members: Vec<Member>,
}

impl ResourceGroup {
    pub fn new(name: impl Into<String>) -> Self {
        ResourceGroup {
            name: name.into(),
            members: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a member that starts after the members named in `depends_on`.
    pub fn add<R: Resource>(
        &mut self,
        name: &str,
        resource: Arc<Managed<R>>,
        depends_on: &[&str],
    ) -> Result<&mut Self, GroupError> {
        self.add_dyn(name, resource, depends_on)
    }

    /// As [`add`](Self::add), for a resource only known through its object-safe view.
    pub fn add_dyn(
        &mut self,
        name: &str,
        resource: Arc<dyn AnyResource>,
        depends_on: &[&str],
    ) -> Result<&mut Self, GroupError> {
        if self.position(name).is_some() {
            return Err(GroupError::DuplicateMember {
                group: self.name.clone(),
                member: name.to_string(),
            });
        }
        let mut level = 0;
        for dependency in depends_on {
            let Some(index) = self.position(dependency) else {
                return Err(GroupError::UnknownDependency {
                    group: self.name.clone(),
                    member: name.to_string(),
                    dependency: dependency.to_string(),
                });
            };
            level = level.max(self.members[index].level + 1);
        }
        self.members.push(Member {
            name: name.to_string(),
            resource,
            level,
        });
        Ok(self)
    }

    /// The member `name` with its concrete type, if it has that type.
    pub fn get<R: Resource>(&self, name: &str) -> Option<Arc<Managed<R>>> {
        let member = &self.members[self.position(name)?];
        member
            .resource
            .clone()
            .into_any()
            .downcast::<Managed<R>>()
            .ok()
    }

    /// The member `name` through its object-safe view.
    pub fn get_dyn(&self, name: &str) -> Option<Arc<dyn AnyResource>> {
        Some(self.members[self.position(name)?].resource.clone())
    }

    /// Member names and resources, in the order they were added.
    pub fn members(&self) -> impl Iterator<Item = (&str, &Arc<dyn AnyResource>)> {
        self.members.iter().map(|m| (m.name.as_str(), &m.resource))
    }

    /// Member indices grouped by level, lowest first; within a level, in insertion order.
    fn levels(&self) -> Vec<Vec<usize>> {
        let depth = self.members.iter().map(|m| m.level + 1).max().unwrap_or(0);
        let mut levels = vec![Vec::new(); depth];
        for (index, member) in self.members.iter().enumerate() {
            levels[member.level].push(index);
        }
        levels
    }

    /// Starts every member, level by level, each level concurrently.
    pub async fn initialize(&self) -> Result<(), GroupError> {
        for level in self.levels() {
            let outcomes =
                join_all(level.iter().map(|&i| self.members[i].resource.initialize())).await;
            let failure = level
                .iter()
                .zip(outcomes)
                .find_map(|(&i, outcome)| outcome.err().map(|error| (i, error)));
            if let Some((index, error)) = failure {
                let rollback_failures = self.cleanup_members().await;
                return Err(GroupError::MemberFailed {
                    group: self.name.clone(),
                    member: self.members[index].name.clone(),
                    error: Box::new(error),
                    rollback_failures,
                });
            }
        }
        Ok(())
    }

    /// Stops every member in the reverse of the start order; all end Closed, and the
    /// errors of those whose cleanup failed are returned together.
    pub async fn cleanup(&self) -> Result<(), GroupError> {
        let failures = self.cleanup_members().await;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(GroupError::CleanupFailed {
                group: self.name.clone(),
                failures,
            })
        }
    }

    async fn cleanup_members(&self) -> Vec<(String, ResourceError)> {
        let mut failures = Vec::new();
        for level in self.levels().into_iter().rev() {
            for index in level.into_iter().rev() {
                let member = &self.members[index];
                if let Err(error) = member.resource.cleanup().await {
                    failures.push((member.name.clone(), error));
                }
            }
        }
        failures
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }
}
