#!/usr/bin/env bash
# Reproduce the shipped weights and the model card's cross-validated tables (CPU, 1 thread per run).
# Run from the repository root with ../shared/data/ecg12 beside it. About 32 minutes per input lead on one core
# (measured); the leads are independent, so on 2 cores run `docs/reproduce.sh I & docs/reproduce.sh II; wait`,
# then `docs/reproduce.sh figure` (no argument: both leads and the figure, one after the other).
set -euo pipefail
DATA=../shared/data/ecg12
mkdir -p runs
STEPS=${*:-I II figure}
for LEAD in $STEPS; do
  [ "$LEAD" = figure ] && continue
  # 1. two pre-trainings on 4000 deepfake-ecg records (generated once, torch seed 0, cached in data_cache/):
  #    seed 0 for 40 epochs, seed 1 for 100 epochs (its synthetic validation split drawn with seed 1)
  ecg-dicom train --out runs/${LEAD}_synth.pt --input-lead $LEAD --synthetic 4000 --epochs 40 --seed 0
  ecg-dicom train --out runs/${LEAD}_synth_s1.pt --input-lead $LEAD --synthetic 4000 --epochs 100 --seed 1 --split-seed 1
  # 2. leave-one-database-out: fine-tune each pre-training on the real records of the other
  #    databases (synthetic mixed in); the fold's ensemble is the longer pre-training plus both
  #    fine-tuned models (the 40-epoch pre-training is only a starting point); evaluate it on the
  #    held-out database
  for DB in ludb georgia ptbxl ptb; do
    ecg-dicom train --out runs/${LEAD}_no${DB}.pt --input-lead $LEAD --real $DATA --exclude-db $DB --real-fraction 0.5 \
      --synthetic 4000 --init runs/${LEAD}_synth.pt --epochs 20 --seed 0
    ecg-dicom train --out runs/${LEAD}_no${DB}_s1.pt --input-lead $LEAD --real $DATA --exclude-db $DB --real-fraction 0.5 \
      --synthetic 4000 --init runs/${LEAD}_synth_s1.pt --epochs 20 --seed 1
    ecg-dicom ensemble --out runs/${LEAD}_no${DB}_ens.pt --input-lead $LEAD \
      runs/${LEAD}_synth_s1.pt runs/${LEAD}_no${DB}.pt runs/${LEAD}_no${DB}_s1.pt
    ecg-dicom evaluate $DATA/$DB --input-lead $LEAD --checkpoint runs/${LEAD}_no${DB}_ens.pt \
      --json runs/eval_${LEAD}_${DB}.json
  done
  python -m ecg_dicom.training.crossval runs/eval_${LEAD}_{ludb,georgia,ptbxl,ptb}.json \
    --markdown runs/cv_${LEAD}.md --json runs/cv_${LEAD}.json
  # 3. the shipped model is the PTB-held-out fold ensemble
  cp runs/${LEAD}_noptb_ens.pt ecg_dicom/weights/lead_${LEAD}.pt
done
# 4. the figure: each record drawn by a model that never trained on it
[[ " $STEPS " == *" figure "* ]] || exit 0
python -m ecg_dicom.training.figure --out docs/reconstruction.png \
  "Normal sinus rhythm - Georgia E07506 (model trained without Georgia)=runs/I_nogeorgia_ens.pt=$DATA/georgia/E07506.hea" \
  "Myocardial infarction - PTB s0010_re (shipped lead-I model; PTB held out)=ecg_dicom/weights/lead_I.pt=$DATA/ptb/s0010_re.hea" \
  "Right bundle branch block - Georgia E07509 (model trained without Georgia)=runs/I_nogeorgia_ens.pt=$DATA/georgia/E07509.hea"
