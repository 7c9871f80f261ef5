//! Visibility (SPEC §9 `graph`, `identities list`, `policy report`, `report --html`):
//! the live call graph, the identity inventory, the least-privilege report and
//! issuance anomaly signals. All of it is read through the admin socket only: it
//! reveals the system's shape.

pub mod graph;
pub mod html;
pub mod inventory;
pub mod least_privilege;
pub mod model;
mod recorder;
pub mod redis;

pub use recorder::{
    AnomalyThresholds, Backend, GRAPH_FILE, Visibility, VisibilityError, add_to_graph_file,
};
