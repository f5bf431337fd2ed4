"""A run as a pipeline of named stages (``scheduler.controller.run_job`` calls them in this order):

    check      the run folder's job files, ``checkpoint_run_id``, the weights of the models a manual sweep names
    prepare    the data: datastores, data assets, the train/validation split, RUN/data/
    connect    Ray (RAY_ADDRESS, or an embedded local Ray) and what one trial asks of it
    data check duplicates, leaks, balance, boxes (labels at ``deep``) of the prepared data, on the cluster
    plan       searcher, scheduler and number of trials; AutoMode's picks, its cost probe and budget, and the
               weights of the models it picked
    trials     the Ray Tune run: the run folder's recorder, MLflow, the live view, Tune's fit, one stop path
    finish     leaderboard, best model, MLflow's parent run, report, summary.json

Each stage is a function of the :class:`~scheduler.stages.context.RunContext` and the earlier stages' outputs
(typed dataclasses), in its own module; what a stage writes to the run folder it writes itself.
"""
