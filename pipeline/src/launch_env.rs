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

impl ProcessEnv {
    pub fn from_env() -> Result<ProcessEnv> {
        ProcessEnv::from_vars(|name| std::env::var(name).ok())
    }

    /// From the variables `var` returns (the environment's, or a test's).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<ProcessEnv> {
        let num = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                Some(v) => v.trim().parse().map(Some).with_context(|| format!("environment variable {name}={v} is not a number")),
                None => Ok(None),
            }
        };
        let (rank, world, local, launcher) = if let Some(rank) = num("RANK")? {
            let world = num("WORLD_SIZE")?.context("RANK is set but WORLD_SIZE is not: set both (torchrun does)")?;
            (rank, world, num("LOCAL_RANK")?.unwrap_or(0), Launcher::Torchrun)
        } else if let Some(world) = num("WORLD_SIZE")? {
            bail!("WORLD_SIZE={world} is set but RANK is not: set both (torchrun does), or neither for one process")
        } else if let (Some(rank), Some(world)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
            (rank, world, num("SLURM_LOCALID")?.unwrap_or(0), Launcher::Slurm)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<ProcessEnv> {
        ProcessEnv::from_vars(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn torchrun_then_slurm_then_one_process() {
        let p = env(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]).unwrap();
        assert_eq!((p.rank, p.world_size, p.local_rank, p.launcher), (3, 8, 1, Launcher::Torchrun));
        let p = env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "16"), ("SLURM_LOCALID", "5")]).unwrap();
        assert_eq!((p.rank, p.world_size, p.local_rank, p.launcher), (5, 16, 5, Launcher::Slurm));
        assert_eq!(env(&[]).unwrap(), ProcessEnv { rank: 0, world_size: 1, local_rank: 0, launcher: Launcher::Single });
        assert_eq!(env(&[]).unwrap().with_overrides(Some(1), Some(2)).unwrap().rank, 1);
    }

    #[test]
    fn inconsistent_variables_are_named() {
        assert!(env(&[("RANK", "0")]).unwrap_err().to_string().contains("WORLD_SIZE is not"));
        assert!(env(&[("WORLD_SIZE", "2")]).unwrap_err().to_string().contains("RANK is not"));
        assert!(env(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err().to_string().contains("not below world size 2"));
        assert!(env(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err().to_string().contains("RANK=x is not a number"));
        assert!(env(&[]).unwrap().with_overrides(Some(1), None).is_err());
    }
}
