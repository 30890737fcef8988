//! Fleet rollouts, the pure parts: kstatus health rules and CEL health expressions
//! ([`health`]) and the rollout planner ([`planner`]), which turns a `FleetRollout`, its member
//! clusters and what was observed on them into the next status and a list of actions. No IO.

pub mod health;
pub mod planner;
