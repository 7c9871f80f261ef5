//! Visibility (SPEC §9 `graph`, `identities list`, `policy report`, `report --html`):
//! the live call graph, the identity inventory, the least-privilege report and
//! issuance anomaly signals. All of it is read through the admin socket only: it
//! reveals the system's shape.

pub mod graph;
pub mod html;
pub mod least_privilege;
pub mod model;
pub mod redis;
