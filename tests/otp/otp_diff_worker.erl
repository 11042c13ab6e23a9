%% The scriptable worker of the differential test: fails its next N starts when told (ets dt_fail), logs its
%% starts and stops in order (ets dt_log), registers its pid by path (ets dt_pids), and exits with the reason it is
%% given. It traps exits, so a stop by its supervisor runs terminate/2 and is logged like any other exit.
-module(otp_diff_worker).
-behaviour(gen_server).
-export([start_link/1, start_link/2, init/1, handle_call/3, handle_cast/2, terminate/2]).

start_link(Path) -> gen_server:start_link(?MODULE, Path, []).

start_link(SupPath, Name) -> start_link(<<SupPath/binary, "/", Name/binary>>).

init(Path) ->
    process_flag(trap_exit, true),
    case ets:lookup(dt_fail, Path) of
        [{_, N}] when N > 0 ->
            ets:insert(dt_fail, {Path, N - 1}),
            log(start_failed, Path),
            {stop, boom};
        _ ->
            ets:insert(dt_pids, {Path, self()}),
            log(start, Path),
            {ok, Path}
    end.

handle_call({exit, Reason}, _From, Path) -> {stop, Reason, ok, Path}.

handle_cast(_, Path) -> {noreply, Path}.

terminate(_Reason, Path) ->
    ets:delete_object(dt_pids, {Path, self()}),
    log(stop, Path).

log(Kind, Path) ->
    ets:insert(dt_log, {erlang:unique_integer([monotonic, positive]), atom_to_binary(Kind), Path}).
