//! Which process of a launch this is, from the launcher's environment: torchrun's (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), Slurm srun's (`SLURM_PROCID`,
//! `SLURM_NTASKS`, `SLURM_LOCALID`), or none (a single process). torchrun's variables win when
//! both are set (`srun torchrun ...`: Slurm counts nodes there, torchrun counts workers).

use anyhow::{Context, Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    Single,
    /// `RANK` / `WORLD_SIZE` (torchrun, or set by hand).
    Torchrun,
    Slurm,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessEnv {
    pub rank: usize,
    pub world_size: usize,
    /// The process's index on its machine: selects the GPU.
    pub local_rank: usize,
    pub launcher: Launcher,
}

fn env_usize(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map(Some).with_context(|| format!("environment variable {name}={v} is not a number")),
        Err(_) => Ok(None),
    }
}

impl ProcessEnv {
    pub fn from_env() -> Result<ProcessEnv> {
        let (rank, world, local, launcher) = if let Some(rank) = env_usize("RANK")? {
            let world = env_usize("WORLD_SIZE")?.context("RANK is set but WORLD_SIZE is not: set both (torchrun does)")?;
            (rank, world, env_usize("LOCAL_RANK")?.unwrap_or(0), Launcher::Torchrun)
        } else if let Some(world) = env_usize("WORLD_SIZE")? {
            bail!("WORLD_SIZE={world} is set but RANK is not: set both (torchrun does), or neither for one process")
        } else if let (Some(rank), Some(world)) = (env_usize("SLURM_PROCID")?, env_usize("SLURM_NTASKS")?) {
            (rank, world, env_usize("SLURM_LOCALID")?.unwrap_or(0), Launcher::Slurm)
        } else {
            (0, 1, 0, Launcher::Single)
        };
        if world == 0 || rank >= world {
            bail!("rank {rank} is not below world size {world} (from the {launcher:?} environment)");
        }
        Ok(ProcessEnv { rank, world_size: world, local_rank: local, launcher })
    }

    /// `--rank` / `--world-size` flags override the environment's pair.
    pub fn with_overrides(mut self, rank: Option<usize>, world_size: Option<usize>) -> Result<ProcessEnv> {
        self.rank = rank.unwrap_or(self.rank);
        self.world_size = world_size.unwrap_or(self.world_size);
        if self.world_size == 0 || self.rank >= self.world_size {
            bail!("rank {} is not below world size {}", self.rank, self.world_size);
        }
        Ok(self)
    }
}
