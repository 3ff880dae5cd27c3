#!/usr/bin/env bash
# Reproduce the shipped weights and the model card's cross-validated tables (CPU, 1 thread each).
# Run from the repository root with ../shared/data/ecg12 beside it. About 2.5 CPU-hours in all.
set -euo pipefail
DATA=../shared/data/ecg12
mkdir -p runs
for LEAD in I II; do
  # 1. pre-train on 4000 deepfake-ecg records (generated once, torch seed 0, cached in data_cache/)
  ecg-dicom train --out runs/${LEAD}_synth.pt --input-lead $LEAD --synthetic 4000 --epochs 40 --seed 0
  # 2. leave-one-database-out: fine-tune on the real records of the other databases, synthetic mixed in
  for DB in ludb georgia ptbxl ptb; do
    ecg-dicom train --out runs/${LEAD}_no${DB}.pt --input-lead $LEAD --real $DATA --exclude-db $DB --real-fraction 0.5 \
      --synthetic 4000 --init runs/${LEAD}_synth.pt --epochs 20 --seed 0
    ecg-dicom evaluate $DATA/$DB --input-lead $LEAD --checkpoint runs/${LEAD}_no${DB}.pt \
      --json runs/eval_${LEAD}_${DB}.json
  done
  python -m ecg_dicom.training.crossval runs/eval_${LEAD}_{ludb,georgia,ptbxl,ptb}.json \
    --markdown runs/cv_${LEAD}.md --json runs/cv_${LEAD}.json
  # 3. the shipped model is the PTB-held-out fold model
  cp runs/${LEAD}_noptb.pt ecg_dicom/weights/lead_${LEAD}.pt
done
# 4. the figure: each record drawn by a model that never trained on it
python -m ecg_dicom.training.figure --out docs/reconstruction.png \
  "Normal sinus rhythm - Georgia E07506 (model trained without Georgia)=runs/I_nogeorgia.pt=$DATA/georgia/E07506.hea" \
  "Myocardial infarction - PTB s0010_re (shipped lead-I model; PTB held out)=ecg_dicom/weights/lead_I.pt=$DATA/ptb/s0010_re.hea" \
  "Right bundle branch block - Georgia E07509 (model trained without Georgia)=runs/I_nogeorgia.pt=$DATA/georgia/E07509.hea"
