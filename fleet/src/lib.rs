//! Fleet rollouts, the pure parts: kstatus health rules and CEL health expressions
//! ([`health`]) and the rollout planner ([`planner`]), which turns a `FleetRollout`, its member
//! clusters and what was observed on them into the next status and a list of actions. No IO.
//! Beside them: rollout sources rendered into a revisioned object set ([`source`]: inline,
//! ConfigMap, Git, Flux artifacts) and per-cluster overrides ([`overrides`], pure).

pub mod health;
pub mod overrides;
pub mod planner;
pub mod source;
