# Reproductions of the GLA paper's three settings, and a quick start. See docs/reproduce.md.
#
#   make repro-imagenet   IMAGENET=data/imagenet
#                         [FT_CHECKPOINT=ft.pt ZS_CHECKPOINT=openai SHIFTS="v2 sketch r a objectnet" SHIFT_ROOT=data]
#   make repro-fewshot    DATASET=dtd COOP_DATA=data/coop       (SHOTS="1 2 4 8 16" SEEDS="1 2 3" HEAD=linear|prompt|anchored)
#   make repro-fewshot-all COOP_DATA=data/coop IMAGENET=data/imagenet
#   make repro-lt         DATASET=imagenet_lt|places_lt
#   make quickstart-clip  (downloads CIFAR-100 into TV_DATA)
#
# Every step is a file target whose recipe is one gla command; gla writes its outputs
# atomically, so a file that exists is complete and Make's own timestamps decide what is left
# to do (an interrupted `gla extract` resumes where it stopped). Outputs go to
# $(RUNS)/<setting>/<model>/...; a second run of a finished target does nothing.
# Needs GNU Make (any version from 3.82 on).

# ------------------------------------------------------------------------------ variables
GLA        ?= $(BIN)/gla
GLA_PYTHON ?= $(BIN)/python
MODEL      ?= ViT-B-16
PRETRAINED ?= openai
DEVICE     ?= auto
EXTRACT_FLAGS ?=
RUNS       ?= runs
Q_TEMPERATURE ?= confidence
ENSEMBLE_ALPHA ?= 0.5
HOLDOUT_SHOTS ?= 10

IMAGENET   ?= data/imagenet
IMAGENET_CLASSNAMES ?= $(RUNS)/imagenet/classnames.txt
IMAGENET_TEMPLATES ?= imagenet
COOP_DATA  ?= data/coop
SHOTS      ?= 1 2 4 8 16
SEEDS      ?= 1 2 3
# The fine-tuned head of the few-shot runs: prompt (the default, as the paper: the GLA authors'
# prompt learner, over AUGMENT_VIEWS cached views of each training image, PROMPT_EPOCHS epochs at
# their learning rate for the shot count, which is gla fit's default), linear (a probe on the
# features) or anchored (a probe pulled towards the zero-shot head).
HEAD       ?= prompt
AUGMENT_VIEWS ?= 10
PROMPT_EPOCHS ?= 50
HEAD_FILE_linear := lp
HEAD_NAME_linear := linear-probe
HEAD_FILE_prompt := prompt
HEAD_NAME_prompt := prompt
# anchored: a probe whose penalty pulls it towards the dataset's zero-shot head (gla fit --anchor).
HEAD_FILE_anchored := anchored
HEAD_NAME_anchored := anchored-probe
FEWSHOT_ALL := imagenet caltech101 oxfordpets stanfordcars oxfordflowers food101 fgvcaircraft sun397 dtd \
               eurosat ucf101
FEWSHOT_DATASETS ?= $(FEWSHOT_ALL)
IMAGENET_LT_LISTS ?= data/ImageNet_LT
IMAGENET_LT_ROOT  ?= $(IMAGENET)
PLACES_LT_LISTS   ?= data/Places_LT
PLACES_LT_ROOT    ?= data/places365
PLACES_LT_CLASSNAMES ?= $(PLACES_LT_LISTS)/classnames.txt
LT_TEMPLATES      ?= imagenet
TV_DATA    ?= data/torchvision
QUICKSTART_MODEL      ?= ViT-B-32
QUICKSTART_PRETRAINED ?= openai

# runs/<setting>/<model>/: the architecture and weights, e.g. ViT-B-16_openai (a path: its file stem).
tag_of = $(notdir $(basename $(1)))_$(notdir $(basename $(2)))
MODEL_TAG := $(call tag_of,$(MODEL),$(PRETRAINED))
model_args = --model $(1) --pretrained $(2) --device $(DEVICE)
MODEL_ARGS := $(call model_args,$(MODEL),$(PRETRAINED))
# With the default GLA, `make install` runs first (order-only: an existing install is kept).
GLA_INSTALLED := $(if $(filter $(BIN)/gla,$(GLA)),$(STAMP))

# ------------------------------------------------------------------------------ many-shot protocol
# $(call manyshot,DIR,MODEL_ARGS,TRAIN_SOURCE,TEST_SOURCE,TEMPLATES,TAGS): features of a training and
# a test set; a zero-shot head; HOLDOUT_SHOTS images per class of train held out (class-balanced);
# a linear probe fitted on the rest with its penalty chosen (and temperature calibrated) on the
# held-out part; q estimated from zero-shot logits of the held-out part; GLA against zero-shot,
# the debiased zero-shot model, the probe and their ensemble on the test set, with head / medium /
# tail thirds of classes by q.
define manyshot
$(1)/train.h5: | $$(GLA_INSTALLED)
	@mkdir -p $$(@D)
	$$(GLA) extract $(3) -o $$@ $(2) $$(EXTRACT_FLAGS)
$(1)/test.h5: | $$(GLA_INSTALLED)
	@mkdir -p $$(@D)
	$$(GLA) extract $(4) -o $$@ $(2) $$(EXTRACT_FLAGS)
$(1)/zs_head.h5: $(1)/test.h5
	$$(GLA) zeroshot $(2) --like $$< --templates $(5) -o $$@
$(1)/lp_head.h5: $(1)/fit.h5 $(1)/holdout.h5
	$$(GLA) fit $(1)/fit.h5 --val $(1)/holdout.h5 --device $$(DEVICE) -o $$@
$(1)/prior.h5: $(1)/zs_holdout.h5
	$$(GLA) estimate-prior $$< --temperature $$(Q_TEMPERATURE) -o $$@
$(1)/debiased_test.h5: $(1)/zs_test.h5 $(1)/prior.h5
	$$(GLA) combine --zeroshot $(1)/zs_test.h5 --prior $(1)/prior.h5 -o $$@
$(1)/ensemble_test.h5: $(1)/zs_test.h5 $(1)/prior.h5 $(1)/lp_test.h5
	$$(GLA) combine --zeroshot $(1)/zs_test.h5 --prior $(1)/prior.h5 --finetuned $(1)/lp_test.h5 \
	    --method ensemble --alpha $$(ENSEMBLE_ALPHA) -o $$@
$(1)/gla_test.h5: $(1)/zs_test.h5 $(1)/prior.h5 $(1)/lp_test.h5 $(1)/fit.h5
	$$(GLA) combine --zeroshot $(1)/zs_test.h5 --prior $(1)/prior.h5 --finetuned $(1)/lp_test.h5 \
	    --source-prior $(1)/fit.h5 -o $$@
$(1)/results.json: $(1)/zs_test.h5 $(1)/debiased_test.h5 $(1)/lp_test.h5 $(1)/ensemble_test.h5 \
                   $(1)/gla_test.h5 $(1)/prior.h5
	$$(GLA) evaluate $(1)/zs_test.h5 $(1)/debiased_test.h5 $(1)/lp_test.h5 $(1)/ensemble_test.h5 \
	    $(1)/gla_test.h5 --name zero-shot --name zero-shot-debiased --name linear-probe --name ensemble \
	    --name GLA --prior $(1)/prior.h5 $(6) --device $$(DEVICE) --bootstrap 1000 --json-out $$@
$(1)/report.md: $(1)/results.json
	$$(GLA) report $$< -o $$@
endef

# Steps shared by every setting's folder (pattern rules, so one definition serves all).
# The zero-shot or probe logits of a set: logits of DIR/X.h5 under DIR/zs_head.h5 or DIR/lp_head.h5.
$(RUNS)/%/zs_test.h5: $(RUNS)/%/test.h5 $(RUNS)/%/zs_head.h5
	$(GLA) logits $^ -o $@
$(RUNS)/%/lp_test.h5: $(RUNS)/%/test.h5 $(RUNS)/%/lp_head.h5
	$(GLA) logits $^ -o $@
$(RUNS)/%/zs_holdout.h5: $(RUNS)/%/holdout.h5 $(RUNS)/%/zs_head.h5
	$(GLA) logits $^ -o $@
$(RUNS)/%/zs_val.h5: $(RUNS)/%/val.h5 $(RUNS)/%/zs_head.h5
	$(GLA) logits $^ -o $@
# One `gla subset` call writes both files: a pattern rule with two targets runs its recipe once
# for both (in every GNU Make version), and reruns it if either is missing.
$(RUNS)/%/holdout.h5 $(RUNS)/%/fit.h5: $(RUNS)/%/train.h5
	$(GLA) subset $< --shots $(HOLDOUT_SHOTS) --seed 0 -o $(RUNS)/$*/holdout.h5 --rest-out $(RUNS)/$*/fit.h5

# ------------------------------------------------------------------------------ repro-imagenet
# ImageNet train and val as image folders of wnid sub-folders, named by CLIP's class names.
IMAGENET_DIR := $(RUNS)/imagenet/$(MODEL_TAG)
$(eval $(call manyshot,$(IMAGENET_DIR),$(MODEL_ARGS),\
    $(IMAGENET)/train --classnames $(IMAGENET_CLASSNAMES),\
    $(IMAGENET)/val --classnames $(IMAGENET_CLASSNAMES),$(IMAGENET_TEMPLATES),--tag setting=imagenet --tag model=$(MODEL_TAG)))
$(IMAGENET_DIR)/train.h5 $(IMAGENET_DIR)/test.h5: | $(IMAGENET_CLASSNAMES)

# CLIP's 1000 class names, one per line in sorted-wnid order (open_clip ships them).
$(RUNS)/imagenet/classnames.txt: | $(GLA_INSTALLED)
	@mkdir -p $(@D)
	$(GLA_PYTHON) -c "from glacli.io.sources.torchvision_datasets import clip_imagenet_classnames as n; print('\n'.join(n()))" > $@.tmp
	mv $@.tmp $@

# ------------------------------------------------------------------------------ repro-imagenet, fine-tuned
# With FT_CHECKPOINT (an end-to-end fine-tuned CLIP, any layout gla extract reads): the paper's own
# setting. On ImageNet val and each shift of SHIFTS: the zero-shot model (ZS_CHECKPOINT's image tower,
# the zero-shot head), its debiased form, the fine-tuned model (FT_CHECKPOINT's image tower and the
# head FT_HEAD), WiSE-FT (both interpolated at WISE_ALPHA: image tower and head), the output-space
# ensemble and GLA; q, the zero-shot head and the held-out split are the linear-probe run's (above).
# Shift logits are combined on ImageNet's 1000 classes, then projected onto the set's classes.
FT_CHECKPOINT ?=
ZS_CHECKPOINT ?= $(PRETRAINED)
FT_HEAD    ?= probe
WISE_ALPHA ?= 0.5
FT_BOOTSTRAP ?= 1000
SHIFTS     ?= v2 sketch r a objectnet
SHIFT_ROOT ?= data
SHIFT_DIR_v2        ?= $(SHIFT_ROOT)/imagenetv2-matched-frequency-format-val
SHIFT_DIR_sketch    ?= $(SHIFT_ROOT)/sketch
SHIFT_DIR_r         ?= $(SHIFT_ROOT)/imagenet-r
SHIFT_DIR_a         ?= $(SHIFT_ROOT)/imagenet-a
SHIFT_DIR_objectnet ?= $(SHIFT_ROOT)/objectnet-1.0
# Per evaluation set: its source, its name in the report, and its projection (none: 1000 classes).
SET_SOURCE_imagenet  = $(IMAGENET)/val --classnames $(IMAGENET_CLASSNAMES)
SET_SOURCE_v2        = imagenet-v2:$(SHIFT_DIR_v2) --classnames $(IMAGENET_CLASSNAMES)
SET_SOURCE_sketch    = imagenet-sketch:$(SHIFT_DIR_sketch) --classnames $(IMAGENET_CLASSNAMES)
SET_SOURCE_r         = imagenet-r:$(SHIFT_DIR_r) --classnames $(IMAGENET_CLASSNAMES)
SET_SOURCE_a         = imagenet-a:$(SHIFT_DIR_a) --classnames $(IMAGENET_CLASSNAMES)
SET_SOURCE_objectnet = objectnet:$(SHIFT_DIR_objectnet) --classnames $(IMAGENET_CLASSNAMES)
SET_NAME_imagenet := ImageNet
SET_NAME_v2       := ImageNet-V2
SET_NAME_sketch   := ImageNet-Sketch
SET_NAME_r        := ImageNet-R
SET_NAME_a        := ImageNet-A
SET_NAME_objectnet := ObjectNet
SET_PROJECT_r         = --onto imagenet-r
SET_PROJECT_a         = --onto imagenet-a
SET_PROJECT_objectnet = --onto objectnet --mappings $(SHIFT_DIR_objectnet)/mappings
FT_METHODS := zs debiased ft wise ensemble gla
FT_NAMES   := --name zero-shot --name zero-shot-debiased --name fine-tuned --name WiSE-FT --name ensemble --name GLA

FT_DIR := $(IMAGENET_DIR)/finetuned_$(notdir $(basename $(FT_CHECKPOINT)))
# A checkpoint file may hold only the image tower: the zero-shot weights complete it.
is_file = $(wildcard $(1))
ZS_ARGS   = --model $(MODEL) --pretrained $(ZS_CHECKPOINT) $(if $(call is_file,$(ZS_CHECKPOINT)),--base-pretrained $(PRETRAINED)) --device $(DEVICE)
FT_ARGS   = --model $(MODEL) --pretrained $(FT_CHECKPOINT) --base-pretrained $(PRETRAINED) --device $(DEVICE)
WISE_ARGS = --model $(MODEL) --pretrained $(FT_DIR)/wise.safetensors --base-pretrained $(PRETRAINED) --device $(DEVICE)
# The fine-tuned head: probe (a linear probe on the fine-tuned features of ImageNet train, fitted as the
# linear-probe run's, its training set removed as pi_s) or zeroshot (the checkpoint's own text tower
# with the ImageNet prompts, for FLYP / open_clip fine-tuning) or import (the checkpoint's own trained head,
# FT_HEAD_KEY, read as WiSE-FT's ClassificationHead(normalize=True): gla import --input-normalize).
FT_SOURCE_PRIOR_probe    := $(FT_DIR)/ft_fit.h5
FT_SOURCE_PRIOR_zeroshot := uniform
FT_SOURCE_PRIOR_import   := uniform
# The file of a method on a set that evaluate reads: projected onto the set's classes where it has some.
set_file = $(FT_DIR)/$(1)/$(2)$(if $(SET_PROJECT_$(1)),_projected).h5

$(FT_DIR)/ft_train.h5: | $(IMAGENET_CLASSNAMES) $(GLA_INSTALLED)
	@mkdir -p $(@D)
	$(GLA) extract $(IMAGENET)/train --classnames $(IMAGENET_CLASSNAMES) -o $@ $(FT_ARGS) $(EXTRACT_FLAGS)
$(FT_DIR)/ft_holdout.h5 $(FT_DIR)/ft_fit.h5: $(FT_DIR)/ft_train.h5
	$(GLA) subset $< --shots $(HOLDOUT_SHOTS) --seed 0 -o $(FT_DIR)/ft_holdout.h5 --rest-out $(FT_DIR)/ft_fit.h5
$(FT_DIR)/ft_head-probe.h5: $(FT_DIR)/ft_fit.h5 $(FT_DIR)/ft_holdout.h5
	$(GLA) fit $< --val $(FT_DIR)/ft_holdout.h5 --device $(DEVICE) -o $@
$(FT_DIR)/ft_head-zeroshot.h5: $(IMAGENET_DIR)/test.h5
	@mkdir -p $(@D)
	$(GLA) zeroshot --model $(MODEL) --pretrained $(FT_CHECKPOINT) --device $(DEVICE) --like $< \
	    --templates $(IMAGENET_TEMPLATES) -o $@
FT_HEAD_KEY ?= classification_head
$(FT_DIR)/ft_head-import.h5: | $(IMAGENET_CLASSNAMES) $(GLA_INSTALLED)
	@mkdir -p $(@D)
	$(GLA) import $(FT_CHECKPOINT) --kind head --key $(FT_HEAD_KEY) --input-normalize \
	    --classnames $(IMAGENET_CLASSNAMES) -o $@
$(FT_DIR)/wise.safetensors: | $(GLA_INSTALLED)
	@mkdir -p $(@D)
	$(GLA) interpolate $(ZS_CHECKPOINT) $(FT_CHECKPOINT) --model $(MODEL) --alpha $(WISE_ALPHA) -o $@
$(FT_DIR)/wise_head.h5: $(IMAGENET_DIR)/zs_head.h5 $(FT_DIR)/ft_head-$(FT_HEAD).h5
	$(GLA) interpolate $^ --alpha $(WISE_ALPHA) -o $@

# $(call ft_set,SET): the three extractions of one evaluation set, its six methods, their projection
# and its results.json (ImageNet's with head / medium / tail thirds by q).
define ft_set
$(FT_DIR)/$(1)/zs_features.h5: | $$(IMAGENET_CLASSNAMES) $$(GLA_INSTALLED)
	@mkdir -p $$(@D)
	$$(GLA) extract $$(SET_SOURCE_$(1)) -o $$@ $$(ZS_ARGS) $$(EXTRACT_FLAGS)
$(FT_DIR)/$(1)/ft_features.h5: | $$(IMAGENET_CLASSNAMES) $$(GLA_INSTALLED)
	@mkdir -p $$(@D)
	$$(GLA) extract $$(SET_SOURCE_$(1)) -o $$@ $$(FT_ARGS) $$(EXTRACT_FLAGS)
$(FT_DIR)/$(1)/wise_features.h5: $(FT_DIR)/wise.safetensors | $$(IMAGENET_CLASSNAMES)
	@mkdir -p $$(@D)
	$$(GLA) extract $$(SET_SOURCE_$(1)) -o $$@ $$(WISE_ARGS) $$(EXTRACT_FLAGS)
$(FT_DIR)/$(1)/zs.h5: $(FT_DIR)/$(1)/zs_features.h5 $(IMAGENET_DIR)/zs_head.h5
	$$(GLA) logits $$^ -o $$@
$(FT_DIR)/$(1)/ft.h5: $(FT_DIR)/$(1)/ft_features.h5 $(FT_DIR)/ft_head-$$(FT_HEAD).h5
	$$(GLA) logits $$^ -o $$@
$(FT_DIR)/$(1)/wise.h5: $(FT_DIR)/$(1)/wise_features.h5 $(FT_DIR)/wise_head.h5
	$$(GLA) logits $$^ -o $$@
$(FT_DIR)/$(1)/debiased.h5: $(FT_DIR)/$(1)/zs.h5 $(IMAGENET_DIR)/prior.h5
	$$(GLA) combine --zeroshot $$< --prior $$(word 2,$$^) -o $$@
$(FT_DIR)/$(1)/ensemble.h5: $(FT_DIR)/$(1)/zs.h5 $(IMAGENET_DIR)/prior.h5 $(FT_DIR)/$(1)/ft.h5
	$$(GLA) combine --zeroshot $$< --prior $$(word 2,$$^) --finetuned $$(word 3,$$^) \
	    --method ensemble --alpha $$(ENSEMBLE_ALPHA) -o $$@
$(FT_DIR)/$(1)/gla.h5: $(FT_DIR)/$(1)/zs.h5 $(IMAGENET_DIR)/prior.h5 $(FT_DIR)/$(1)/ft.h5 \
                       $$(filter-out uniform,$$(FT_SOURCE_PRIOR_$$(FT_HEAD)))
	$$(GLA) combine --zeroshot $$< --prior $$(word 2,$$^) --finetuned $$(word 3,$$^) \
	    --source-prior $$(FT_SOURCE_PRIOR_$$(FT_HEAD)) -o $$@
$(FT_DIR)/$(1)/%_projected.h5: $(FT_DIR)/$(1)/%.h5
	$$(GLA) project $$< $$(SET_PROJECT_$(1)) -o $$@
$(FT_DIR)/$(1)/results.json: $(foreach m,$(FT_METHODS),$(call set_file,$(1),$(m))) $(IMAGENET_DIR)/prior.h5
	$$(GLA) evaluate $$(wordlist 1,6,$$^) $$(FT_NAMES) $(if $(filter imagenet,$(1)),--prior $(IMAGENET_DIR)/prior.h5) \
	    --tag set=$$(SET_NAME_$(1)) --tag model=$$(MODEL_TAG) --device $$(DEVICE) --bootstrap $$(FT_BOOTSTRAP) --json-out $$@
endef
$(foreach set,imagenet $(SHIFTS),$(eval $(call ft_set,$(set))))

# report.md: methods x sets (top-1), the shifts' mean (± std over the shifts), and ImageNet's
# head / medium / tail thirds by q.
FT_SHIFT_RESULTS = $(foreach set,$(SHIFTS),$(FT_DIR)/$(set)/results.json)
$(FT_DIR)/report.md: $(FT_DIR)/imagenet/results.json $(FT_SHIFT_RESULTS)
	$(GLA) report $^ --cols set -o $(FT_DIR)/report-sets.md
	$(if $(SHIFTS),$(GLA) report $(FT_SHIFT_RESULTS) -o $(FT_DIR)/report-shifts-mean.md)
	$(foreach third,head medium tail,$(GLA) report $< --metric q_$(third) -o $(FT_DIR)/report-q_$(third).md &&) true
	cat $(FT_DIR)/report-sets.md $(if $(SHIFTS),$(FT_DIR)/report-shifts-mean.md) \
	    $(foreach third,head medium tail,$(FT_DIR)/report-q_$(third).md) > $@.tmp
	mv $@.tmp $@

.PHONY: repro-imagenet
repro-imagenet: $(if $(FT_CHECKPOINT),$(FT_DIR)/report.md,$(IMAGENET_DIR)/report.md)

# ------------------------------------------------------------------------------ quickstart-clip
# The same protocol on CIFAR-100, downloaded by torchvision into TV_DATA (needs network once).
QUICKSTART_DIR := $(RUNS)/quickstart/$(call tag_of,$(QUICKSTART_MODEL),$(QUICKSTART_PRETRAINED))
$(eval $(call manyshot,$(QUICKSTART_DIR),$(call model_args,$(QUICKSTART_MODEL),$(QUICKSTART_PRETRAINED)),\
    torchvision:CIFAR100 --split train --root $(TV_DATA) --download,\
    torchvision:CIFAR100 --split test --root $(TV_DATA) --download,imagenet,--tag setting=cifar100))

.PHONY: quickstart-clip
quickstart-clip: $(QUICKSTART_DIR)/report.md

# ------------------------------------------------------------------------------ repro-fewshot
# The CoOp benchmark: per dataset, the source of its train / val / test splits and its prompts.
#   dataset         folder under COOP_DATA   split JSON                            images (inside the folder)
FS_caltech101    := caltech-101    split_zhou_Caltech101.json          101_ObjectCategories
FS_oxfordpets    := oxford_pets    split_zhou_OxfordPets.json          images
FS_stanfordcars  := stanford_cars  split_zhou_StanfordCars.json        .
FS_oxfordflowers := oxford_flowers split_zhou_OxfordFlowers.json       jpg
FS_food101       := food-101       split_zhou_Food101.json             images
FS_sun397        := sun397         split_zhou_SUN397.json              SUN397
FS_dtd           := dtd            split_zhou_DescribableTextures.json images
FS_eurosat       := eurosat        split_zhou_EuroSAT.json             2750
FS_ucf101        := ucf101         split_zhou_UCF101.json              UCF-101-midframes
# FGVCAircraft ships its official splits, read by torchvision from COOP_DATA/fgvc-aircraft-2013b/.
fs_source = $(if $(filter fgvcaircraft,$(1)),torchvision:FGVCAircraft --split $(2) --root $(COOP_DATA),\
    $(COOP_DATA)/$(word 1,$(FS_$(1)))/$(word 2,$(FS_$(1))) --split $(2) \
    --root $(COOP_DATA)/$(word 1,$(FS_$(1)))/$(word 3,$(FS_$(1))))
FEWSHOT_DIR := $(RUNS)/fewshot/$(MODEL_TAG)
val_shots = $(if $(filter 1 2 3,$(1)),$(1),4)
# The training split a dataset's views are cropped from, and its prompt for the prompt head
# (ImageNet: CoOp's and the authors' "a photo of a {}.", not the first of CLIP's 80).
fs_train_source = $(if $(filter imagenet,$(1)),$(IMAGENET)/train --classnames $(IMAGENET_CLASSNAMES),\
    $(call fs_source,$(1),train))
prompt_template = $(if $(filter imagenet,$(1)),simple,$(1))
FS_HEAD := $(HEAD_FILE_$(HEAD))

# $(call fewshot_split,NAME,SPLIT) and $(call fewshot_head,NAME): features of a dataset's splits
# and its zero-shot head with the dataset's prompts.
define fewshot_split
$(FEWSHOT_DIR)/$(1)/$(2).h5: | $$(GLA_INSTALLED)
	@mkdir -p $$(@D)
	$$(GLA) extract $$(call fs_source,$(1),$(2)) -o $$@ $$(MODEL_ARGS) $$(EXTRACT_FLAGS)
endef
define fewshot_head
$(FEWSHOT_DIR)/$(1)/zs_head.h5: $(FEWSHOT_DIR)/$(1)/test.h5
	$$(GLA) zeroshot $$(MODEL_ARGS) --like $$< --templates $(1) -o $$@
endef

# $(call fewshot_run,NAME,K,SEED,TRAIN_POOL,VAL_POOL,TEST,ZS_HEAD,ZS_TEST): one K-shot run. K training
# images per class, min(K, 4) validation images per class from the validation part (as CoOp does);
# the fine-tuned head (HEAD): a probe whose penalty and temperature are chosen on the validation
# shots, or prompts learned on AUGMENT_VIEWS views of each training image (the images of train.h5,
# cropped from the training split) with the epoch and temperature chosen on the validation shots;
# q from the zero-shot logits of training and validation shots pooled; zero-shot, the head and GLA
# on the test set.
define fewshot_run
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/train.h5: $(4)
	@mkdir -p $$(@D)
	$$(GLA) subset $$< --shots $(2) --seed $(3) -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/val.h5: $(5)
	@mkdir -p $$(@D)
	$$(GLA) subset $$< --shots $(call val_shots,$(2)) --seed $(3) -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/lp_head.h5: $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/train.h5 \
                                                  $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/val.h5
	$$(GLA) fit $$< --val $$(word 2,$$^) --device $$(DEVICE) -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/zs_train.h5: $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/train.h5 $(7)
	$$(GLA) logits $$^ -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/zs_val.h5: $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/val.h5 $(7)
	$$(GLA) logits $$^ -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/prior.h5: $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/zs_train.h5 \
                                                $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/zs_val.h5
	$$(GLA) estimate-prior $$^ --temperature $$(Q_TEMPERATURE) -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/lp_test.h5: $(6) $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/lp_head.h5
	$$(GLA) logits $$^ -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/anchored_head.h5: $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/train.h5 \
                                                        $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/val.h5 $(7)
	$$(GLA) fit $$< --val $$(word 2,$$^) --anchor $$(word 3,$$^) --device $$(DEVICE) -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/anchored_test.h5: $(6) $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/anchored_head.h5
	$$(GLA) logits $$^ -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/train_views.h5: $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/train.h5
	$$(GLA) extract $$(call fs_train_source,$(1)) --rows-of $$< --augment-views $$(AUGMENT_VIEWS) --seed $(3) \
	    -o $$@ $$(MODEL_ARGS) $$(EXTRACT_FLAGS)
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/prompt_head.h5: $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/train_views.h5 \
                                                      $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/val.h5
	$$(GLA) fit $$< --method prompt --val $$(word 2,$$^) --template $(call prompt_template,$(1)) \
	    --epochs $$(PROMPT_EPOCHS) --seed $(3) $$(MODEL_ARGS) -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/prompt_test.h5: $(6) $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/prompt_head.h5
	$$(GLA) logits $$^ -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/gla-$(HEAD)_test.h5: $(8) $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/prior.h5 \
                                                   $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/$(FS_HEAD)_test.h5
	$$(GLA) combine --zeroshot $(8) --prior $$(word 2,$$^) --finetuned $$(word 3,$$^) -o $$@
$(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/results-$(HEAD).json: $(8) $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/$(FS_HEAD)_test.h5 \
        $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/gla-$(HEAD)_test.h5 $(FEWSHOT_DIR)/$(1)/$(2)shot/seed$(3)/prior.h5
	$$(GLA) evaluate $$(wordlist 1,3,$$^) --name zero-shot --name $(HEAD_NAME_$(HEAD)) --name GLA \
	    --prior $$(word 4,$$^) --tag dataset=$(1) --tag shots=$(2) --tag seed=$(3) --device $$(DEVICE) --bootstrap 1000 --json-out $$@
endef

# The files a dataset's runs start from. ImageNet (no split JSON) reuses the many-shot setting's:
# shots from its training part, validation shots from its held-out part, test = ImageNet val.
fs_file = $(if $(filter imagenet,$(1)),$(IMAGENET_DIR)/$(2).h5,$(FEWSHOT_DIR)/$(1)/$(3).h5)
fs_results = $(foreach k,$(SHOTS),$(foreach s,$(SEEDS),$(FEWSHOT_DIR)/$(1)/$(k)shot/seed$(s)/results-$(HEAD).json))

# One report per dataset and head: methods x shots, mean ± std over seeds.
define fewshot_report
$(FEWSHOT_DIR)/$(1)/report-$(HEAD).md: $(call fs_results,$(1))
	$$(GLA) report $$^ -o $$@ --cols shots
endef

FEWSHOT_RULES := $(sort $(FEWSHOT_DATASETS) $(filter $(DATASET),$(FEWSHOT_ALL)))
$(foreach d,$(filter-out imagenet,$(FEWSHOT_RULES)),\
    $(foreach split,train val test,$(eval $(call fewshot_split,$(d),$(split))))\
    $(eval $(call fewshot_head,$(d))))
$(foreach d,$(FEWSHOT_RULES),\
    $(eval $(call fewshot_report,$(d)))\
    $(foreach k,$(SHOTS),$(foreach s,$(SEEDS),$(eval $(call fewshot_run,$(d),$(k),$(s),\
        $(call fs_file,$(d),fit,train),$(call fs_file,$(d),holdout,val),$(call fs_file,$(d),test,test),\
        $(call fs_file,$(d),zs_head,zs_head),$(call fs_file,$(d),zs_test,zs_test))))))

# One report over all datasets: methods x shots, mean ± std over datasets and seeds.
$(FEWSHOT_DIR)/report-$(HEAD).md: $(foreach d,$(FEWSHOT_DATASETS),$(FEWSHOT_DIR)/$(d)/report-$(HEAD).md)
	$(GLA) report $(foreach d,$(FEWSHOT_DATASETS),$(call fs_results,$(d))) -o $@ --cols shots

.PHONY: repro-fewshot repro-fewshot-all
repro-fewshot: $(FEWSHOT_DIR)/$(DATASET)/report-$(HEAD).md
repro-fewshot-all: $(FEWSHOT_DIR)/report-$(HEAD).md

# ------------------------------------------------------------------------------ repro-lt
# The published lists as manifests (integer labels named by a class-names file). The probe is
# trained with the balanced (logit-adjusted) loss, so it does not absorb the training label prior
# pi_s and its temperature is calibrated on the debiased head; GLA then adds nothing for pi_s
# (--source-prior uniform). docs/reproduce.md measures this against a plain probe with
# --source-prior train.h5. q comes from the class-balanced validation list.
LT_imagenet_lt := $(IMAGENET_LT_LISTS)/ImageNet_LT $(IMAGENET_LT_ROOT) $(IMAGENET_CLASSNAMES)
LT_places_lt   := $(PLACES_LT_LISTS)/Places_LT $(PLACES_LT_ROOT) $(PLACES_LT_CLASSNAMES)
LT_DIR = $(RUNS)/lt/$(MODEL_TAG)/$(1)

define lt_split
$(call LT_DIR,$(1))/$(2).h5: | $(word 3,$(LT_$(1))) $$(GLA_INSTALLED)
	@mkdir -p $$(@D)
	$$(GLA) extract $(word 1,$(LT_$(1)))_$(2).txt --root $(word 2,$(LT_$(1))) --classnames $(word 3,$(LT_$(1))) \
	    -o $$@ $$(MODEL_ARGS) $$(EXTRACT_FLAGS)
endef
define lt_dataset
$(call LT_DIR,$(1))/zs_head.h5: $(call LT_DIR,$(1))/test.h5
	$$(GLA) zeroshot $$(MODEL_ARGS) --like $$< --templates $$(LT_TEMPLATES) -o $$@
$(call LT_DIR,$(1))/lp_head.h5: $(call LT_DIR,$(1))/train.h5 $(call LT_DIR,$(1))/val.h5
	$$(GLA) fit $$< --val $$(word 2,$$^) --balanced --device $$(DEVICE) -o $$@
$(call LT_DIR,$(1))/prior.h5: $(call LT_DIR,$(1))/zs_val.h5
	$$(GLA) estimate-prior $$< --temperature $$(Q_TEMPERATURE) -o $$@
$(call LT_DIR,$(1))/gla_test.h5: $(call LT_DIR,$(1))/zs_test.h5 $(call LT_DIR,$(1))/prior.h5 \
                                 $(call LT_DIR,$(1))/lp_test.h5
	$$(GLA) combine --zeroshot $$< --prior $$(word 2,$$^) --finetuned $$(word 3,$$^) --source-prior uniform -o $$@
$(call LT_DIR,$(1))/results.json: $(call LT_DIR,$(1))/zs_test.h5 $(call LT_DIR,$(1))/lp_test.h5 \
        $(call LT_DIR,$(1))/gla_test.h5 $(call LT_DIR,$(1))/prior.h5 $(call LT_DIR,$(1))/train.h5
	$$(GLA) evaluate $$(wordlist 1,3,$$^) --name zero-shot --name linear-probe --name GLA \
	    --prior $$(word 4,$$^) --train $$(word 5,$$^) --tag dataset=$(1) --tag model=$$(MODEL_TAG) \
	    --device $$(DEVICE) --bootstrap 1000 --json-out $$@
$(call LT_DIR,$(1))/report.md: $(call LT_DIR,$(1))/results.json
	$$(GLA) report $$< -o $$@
endef
$(foreach d,imagenet_lt places_lt,$(eval $(call lt_dataset,$(d)))\
    $(foreach split,train val test,$(eval $(call lt_split,$(d),$(split)))))

.PHONY: repro-lt
repro-lt: $(call LT_DIR,$(DATASET))/report.md

# ------------------------------------------------------------------------------ checks
# A clear message instead of "no rule to make target" when DATASET is missing or unknown.
ifneq ($(filter repro-fewshot,$(MAKECMDGOALS)),)
  ifeq ($(filter $(DATASET),$(FEWSHOT_ALL)),)
    $(error repro-fewshot needs DATASET=one of: $(FEWSHOT_ALL))
  endif
endif
ifneq ($(filter repro-fewshot repro-fewshot-all,$(MAKECMDGOALS)),)
  ifeq ($(FS_HEAD),)
    $(error HEAD must be linear, prompt or anchored, not $(HEAD))
  endif
endif
ifneq ($(filter repro-imagenet,$(MAKECMDGOALS)),)
  ifneq ($(filter-out v2 sketch r a objectnet,$(SHIFTS)),)
    $(error SHIFTS takes v2 sketch r a objectnet, not $(filter-out v2 sketch r a objectnet,$(SHIFTS)))
  endif
  ifneq ($(FT_CHECKPOINT),)
    ifeq ($(filter probe zeroshot import,$(FT_HEAD)),)
      $(error FT_HEAD must be probe, zeroshot or import, not $(FT_HEAD))
    endif
  endif
endif
ifneq ($(filter repro-lt,$(MAKECMDGOALS)),)
  ifeq ($(filter $(DATASET),imagenet_lt places_lt),)
    $(error repro-lt needs DATASET=imagenet_lt or DATASET=places_lt)
  endif
endif

# Keep every intermediate file: each one is a finished step that later runs reuse.
.SECONDARY:
