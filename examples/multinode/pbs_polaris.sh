#!/usr/bin/env bash
# cpt on several nodes under PBS (ALCF Polaris: 4 A100 GPUs a node): mpiexec starts one torchrun
# per node, which starts one rank per GPU; rendezvous on the first node of the allocation.
# --out must be on a file system every node sees (Eagle or the home file system); --resume
# makes the job restartable as is, also on another node count (the checkpoints reshard).
#
#   qsub -l select=4:system=polaris -A MYPROJECT examples/multinode/pbs_polaris.sh
#   qsub -v RECIPE=my.yaml,OUT=/eagle/MYPROJECT/runs/my ... examples/multinode/pbs_polaris.sh
#
#PBS -N cpt
#PBS -l select=2:system=polaris
#PBS -l place=scatter
#PBS -l walltime=06:00:00
#PBS -l filesystems=home:eagle
#PBS -q prod
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"

RECIPE=${RECIPE:-examples/stories260K.yaml}
OUT=${OUT:-runs/stories260K-multinode}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
PORT=${PORT:-29500}
NNODES=$(sort -u "$PBS_NODEFILE" | wc -l)
HEAD=$(head -n 1 "$PBS_NODEFILE")

# Polaris' Slingshot network: NCCL over libfabric (ALCF's documented settings; the aws-ofi-nccl
# plugin comes with the conda module). Adjust for another machine.
export NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}
export NCCL_CROSS_NIC=${NCCL_CROSS_NIC:-1}
export NCCL_COLLNET_ENABLE=${NCCL_COLLNET_ENABLE:-1}
export NCCL_NET=${NCCL_NET:-"AWS Libfabric"}
export FI_CXI_DISABLE_HOST_REGISTER=1
export FI_MR_CACHE_MONITOR=userfaultfd
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

# one process per node (--ppn 1) with all of its cores (--depth 64); torchrun does the rest
mpiexec -n "$NNODES" --ppn 1 --depth 64 --cpu-bind depth \
  python -m torch.distributed.run \
    --nnodes "$NNODES" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-id "${PBS_JOBID:-cpt}" --rdzv-backend c10d --rdzv-endpoint "$HEAD:$PORT" \
    -m cptkit run "$RECIPE" --out "$OUT" --resume
