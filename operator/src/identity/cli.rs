//! `overseer identities …`: the kill switch from the command line.

use clap::{Args, Subcommand};

use super::revoke::revoke_agent;

/// Flags of `overseer identities`.
#[derive(Debug, Clone, Args)]
pub struct IdentitiesArgs {
    /// What to do with ephemeral identities.
    #[command(subcommand)]
    pub command: IdentitiesCommand,
}

/// The subcommands of `overseer identities`.
#[derive(Debug, Clone, Subcommand)]
pub enum IdentitiesCommand {
    /// Revoke every EphemeralIdentity of one agent (sets `spec.revoked: true`; the controller
    /// deletes each token Secret, then the bindings, then the ServiceAccount).
    Revoke(RevokeArgs),
}

/// Flags of `overseer identities revoke`.
#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    /// The agent whose identities to revoke (`spec.agent`).
    #[arg(long)]
    pub agent: String,
    /// Only this namespace (default: every namespace).
    #[arg(long)]
    pub namespace: Option<String>,
}

/// Run `overseer identities …` against the cluster in KUBECONFIG (or the in-cluster config).
pub async fn run(args: IdentitiesArgs) -> anyhow::Result<()> {
    match args.command {
        IdentitiesCommand::Revoke(revoke) => {
            if revoke.agent.is_empty() {
                anyhow::bail!("--agent must not be empty");
            }
            let client = kube::Client::try_default().await?;
            let count = revoke_agent(&client, revoke.namespace.as_deref(), &revoke.agent).await?;
            println!(
                "marked {count} identities of agent {:?} revoked",
                revoke.agent
            );
            Ok(())
        }
    }
}
