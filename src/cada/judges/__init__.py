"""Judges and rewards: the offline refusal judge, the StrongREJECT rubric judge, TRL-style reward functions.

    from cada.judges import RefusalJudge, safety_reward
    RefusalJudge.load().classify(["I can't help with that."])[0].label   # 'refuse'
"""

from cada.judges.batch import calibrate, judge_file, report_text
from cada.judges.refusal import LABELS, JudgeResult, RefusalJudge, string_match_label
from cada.judges.reward import (SAFETY_REWARDS, completion_text, final_response, format_reward, make_safety_reward,
                                safety_reward)
from cada.judges.rubric import RubricJudge, RubricResult, parse_rubric, rubric_prompt
from cada.judges.training import (XSTEST_MODELS, label_report, leave_one_model_out, load_xstest, normalize_label,
                                  train_refusal_judge)

__all__ = ["LABELS", "SAFETY_REWARDS", "XSTEST_MODELS", "JudgeResult", "RefusalJudge", "RubricJudge", "RubricResult",
           "calibrate", "completion_text", "final_response", "format_reward", "judge_file", "label_report",
           "leave_one_model_out", "load_xstest", "make_safety_reward", "normalize_label", "parse_rubric",
           "report_text", "rubric_prompt", "safety_reward", "string_match_label",
           "train_refusal_judge"]
