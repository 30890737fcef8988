//! Fleet rollouts. The pure parts: kstatus health rules and CEL health expressions
//! ([`health`]) and the rollout planner ([`planner`]), which turns a `FleetRollout`, its member
//! clusters and what was observed on them into the next status and a list of actions. The IO
//! parts: clients for member clusters ([`member`]) and delivery to them: apply, prune, drift and
//! health read back ([`apply`]).
//! Beside them: rollout sources rendered into a revisioned object set ([`source`]: inline,
//! ConfigMap, Git, Flux artifacts) and per-cluster overrides ([`overrides`], pure).

pub mod apply;
pub mod health;
pub mod member;
pub mod overrides;
pub mod planner;
pub mod source;
