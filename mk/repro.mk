# Reproductions of the GLA paper's three settings, and a quick start. See docs/reproduce.md.
#
#   make repro-imagenet   IMAGENET=data/imagenet
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
    $(IMAGENET)/val --classnames $(IMAGENET_CLASSNAMES),imagenet,--tag setting=imagenet --tag model=$(MODEL_TAG)))
$(IMAGENET_DIR)/train.h5 $(IMAGENET_DIR)/test.h5: | $(IMAGENET_CLASSNAMES)

# CLIP's 1000 class names, one per line in sorted-wnid order (open_clip ships them).
$(RUNS)/imagenet/classnames.txt: | $(GLA_INSTALLED)
	@mkdir -p $(@D)
	$(GLA_PYTHON) -c "from glacli.io.sources.torchvision_datasets import clip_imagenet_classnames as n; print('\n'.join(n()))" > $@.tmp
	mv $@.tmp $@

.PHONY: repro-imagenet
repro-imagenet: $(IMAGENET_DIR)/report.md

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
ifneq ($(filter repro-lt,$(MAKECMDGOALS)),)
  ifeq ($(filter $(DATASET),imagenet_lt places_lt),)
    $(error repro-lt needs DATASET=imagenet_lt or DATASET=places_lt)
  endif
endif

# Keep every intermediate file: each one is a finished step that later runs reuse.
.SECONDARY:
